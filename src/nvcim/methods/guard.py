"""No correction leaves a chip worse than it found it, unless the user asks (``recover(..., guard=False)``).

``recover`` runs every method that changes chips (``Method.changes_chip``: map-correct, self-tune, chip-kd,
write-verify, rsa) under this guard. Each chip is measured on held-out labelled *check* inputs
(``TaskData.check``, which no method trains or calibrates on) through :meth:`Chip.infer`, before and after the
method: its accuracy, ties broken by the mean cross-entropy (for another task, ``TaskData.metric``: its value,
perplexity for a language model). A chip that scores worse after is put back to its
:meth:`Chip.checkpoint`. The report says how many chips were reverted. Restoring cells costs writes on
silicon; the simulator restores them exactly, and the cost report counts one pulse per restored cell.

Without labels (``TaskData.train`` holds no labels), the check inputs are labelled by the ideal model (the
chip's reference): the score is then the agreement with the model the chips were programmed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..chip.interface import Chip
from ..errors import NvcimError
from ..evaluation.task_metrics import Metric, TopK
from .base import Cost, Method, TaskData


@dataclass
class Guarded:
    """One guarded method: per-chip check score (accuracy, or the task's metric) before and after, and which
    chips were put back."""

    before: Tensor  # (N,) accuracy on the check inputs before the method
    after: Tensor  # (N,) after the method (before any revert)
    reverted: Tensor  # (N,) bool

    @property
    def kept(self) -> Tensor:
        """(N,) accuracy on the check inputs of the state each chip was left in."""
        return torch.where(self.reverted, self.before, self.after)


def labelled_check(chip: Chip, data: TaskData) -> TaskData:
    """``data`` with check inputs (held out now if it has none), labelled by the ideal model if it has no
    labels."""
    data = data.with_check()
    assert data.check is not None
    if not len(data.check[1]):
        if not isinstance(data.task, TopK):
            raise NvcimError(f"the guard scores chips on labelled check data: metric '{data.task.name}' needs "
                             "targets in TaskData.train")
        xc = data.check[0]
        with torch.no_grad():
            labels = torch.cat([chip.reference(xc[i:i + 256].to(chip.device)).argmax(-1).cpu()
                                for i in range(0, len(xc), 256)])
        data = TaskData(data.train, data.unlabelled, (xc, labels), data.metric)
    return data


@torch.no_grad()
def chip_scores(chip: Chip, check: tuple[Tensor, Tensor], batch: int = 256, task: Metric | None = None
                ) -> tuple[Tensor, Tensor]:
    """Per-chip (accuracy, mean cross-entropy) on labelled ``check`` inputs, run on the chips, each (N,); for
    another ``task``, (its value, zeros)."""
    x, y = check
    if task is not None and not isinstance(task, TopK):
        total, count = torch.zeros(chip.n_chips, dtype=torch.float64), 0.0
        for i in range(0, len(y), batch):
            out, _ = chip.infer(x[i:i + batch].to(chip.device))
            sums, n = task.batch(out, y[i:i + batch].to(out.device))
            total, count = total + sums, count + n
        return task.finish(total, count), torch.zeros(chip.n_chips, dtype=torch.float64)
    hits = torch.zeros(chip.n_chips, dtype=torch.float64)
    ce = torch.zeros(chip.n_chips, dtype=torch.float64)
    for i in range(0, len(y), batch):
        logits, _ = chip.infer(x[i:i + batch].to(chip.device))
        yb = y[i:i + batch].to(logits.device)
        hits += (logits.argmax(-1) == yb).sum(1).double().cpu()
        ce += F.cross_entropy(logits.flatten(0, 1).float(), yb.repeat(chip.n_chips), reduction="none").view(
            chip.n_chips, -1).sum(1).double().cpu()
    return hits / len(y), ce / len(y)


def guarded_apply(method: Method, chip: Chip, data: TaskData, progress: bool = False) -> tuple[Cost, Guarded]:
    """Apply ``method`` to every chip; put back each chip that scores worse on ``data.check`` afterwards."""
    assert data.check is not None, "guarded_apply needs TaskData.check (TaskData.with_check())"
    task = data.task
    acc0, ce0 = chip_scores(chip, data.check, task=task)
    state = chip.checkpoint()
    cost = method.apply(chip, data, progress=progress)
    acc1, ce1 = chip_scores(chip, data.check, task=task)
    if task.higher_is_better:
        worse = (acc1 < acc0) | ((acc1 == acc0) & (ce1 > ce0))
    else:
        worse = acc1 > acc0
    restored = chip.restore(state, worse)
    cost.write_verify_pulses += float(restored.double().mean())
    cost.check_samples = max(cost.check_samples, len(data.check[1]))
    n = int(worse.sum())
    cost.notes.append(f"{method.name}: {n} of {chip.n_chips} chips scored lower on {len(data.check[1])} held-out "
                      "check inputs afterwards and were put back" if n else
                      f"{method.name}: no chip scored lower on the check inputs")
    return cost, Guarded(acc0, acc1, worse)
