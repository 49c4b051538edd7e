"""The recovery-method interface, the cost report, and ``recover`` which composes methods.

A method gets the :class:`~nvcim.chip.interface.Chip` and the data it is allowed to use, and returns the
:class:`Cost` it incurred. It talks to the chip through nothing else: the ideal model (where its paper
assumes it is known, as a teacher or for statistics) is the chip's *reference*, and training methods use
the chip's training pass. So the same method can drive any Chip implementation (``tests/fake_chip.py``
is a second one). ``recover`` evaluates before and after.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..chip import AnalogModel, SimulatedChip
from ..chip.interface import Chip
from ..errors import NvcimError
from ..evaluation import EvalResult, evaluate
from ..evaluation.task_metrics import Metric, TopK, get_metric
from ..registry import Registry


@dataclass
class Cost:
    """Hardware and compute cost of a recovery method (summed when methods compose)."""

    sram_fraction: float = 0.0  # extra digital (SRAM) weights, as a fraction of the model's weights
    write_verify_pulses: float = 0.0  # extra programming pulses per chip (mean over chips)
    verified_fraction: float = 0.0  # fraction of weights write-verified
    calibration_samples: int = 0  # unlabelled inputs used on each chip
    labelled_samples: int = 0  # labelled inputs used
    finetune_steps: int = 0
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    check_samples: int = 0  # held-out labelled inputs each chip was measured on (the guard; the same set each time)
    epochs: float = 0.0  # training epochs run (training methods)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.sram_fraction + other.sram_fraction, self.write_verify_pulses + other.write_verify_pulses,
                    self.verified_fraction + other.verified_fraction,
                    self.calibration_samples + other.calibration_samples,
                    self.labelled_samples + other.labelled_samples, self.finetune_steps + other.finetune_steps,
                    self.wall_time_s + other.wall_time_s, self.notes + other.notes,
                    max(self.check_samples, other.check_samples), self.epochs + other.epochs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskData:
    """What a method may use: labelled training data, and unlabelled inputs for on-chip calibration.

    ``check``: held-out labelled inputs that no method trains or calibrates on. Training methods stop early
    on them, and ``recover``'s guard measures every chip on them (:meth:`with_check` makes them). ``metric``:
    the task (top-1 classification by default; ``perplexity`` for a causal language model, whose targets are
    its input tokens): methods train with its loss, and the guard and validation score with it."""

    train: tuple[Tensor, Tensor]
    unlabelled: Tensor
    check: tuple[Tensor, Tensor] | None = None
    metric: str | Metric | None = None

    @property
    def task(self) -> Metric:
        """The metric instance (``metric`` resolved; top-1 when unset)."""
        return get_metric(self.metric)

    def inputs(self, n: int) -> Tensor:
        return self.unlabelled[:n]

    def with_check(self, fraction: float = 0.15, most: int = 500, seed: int = 0) -> TaskData:
        """This data with ``fraction`` of the training examples (at most ``most``, a seeded random choice)
        held out as ``check``; the rest keep their order. Unlabelled inputs that are the training images
        lose the same ones. Without labels, the check inputs are labelled later by the ideal model
        (``recover`` does it). Returns self if it has a check set already."""
        if self.check is not None:
            return self
        x, y = self.train
        n = len(x)
        k = min(most, int(fraction * n))
        if k < 1:
            raise NvcimError(f"{n} training examples are too few to hold out check inputs: give TaskData.check")
        held = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        labelled = isinstance(y, Tensor)
        train = (x[keep], y[keep] if labelled else y)
        unlabelled = train[0] if self.unlabelled is x else self.unlabelled
        return TaskData(train, unlabelled, (x[held], y[held] if labelled else torch.empty(0, dtype=torch.long)),
                        self.metric)


def read_back(chip: Chip, name: str, reads: int) -> tuple[Tensor, Tensor]:
    """(pos, neg) conductances of layer ``name``, averaged over ``reads`` reads against read noise."""
    acc = [chip.read(name) for _ in range(reads)]
    return torch.stack([a[0] for a in acc]).mean(0), torch.stack([a[1] for a in acc]).mean(0)


def decode_factors(chip: Chip, name: str) -> Tensor:
    """Weight per unit conductance difference of each (slice, column), ``(S, O)`` on the CPU: the
    periphery's decode (shift-and-add and column scale), found by decoding one-hot slices."""
    pos_t, _ = chip.targets(name)
    s_, o_, k_ = pos_t.shape
    return torch.stack([chip.decode(name, torch.nn.functional.one_hot(torch.tensor(si), s_).to(pos_t).view(
        1, s_, 1, 1).expand(1, s_, o_, k_), torch.zeros(1, s_, o_, k_))[0, :, 0].cpu() for si in range(s_)])


FISHER_SAMPLES = 256  # labelled examples behind a Fisher diagonal


def fisher_diagonal(chip: Chip, data: TaskData, samples: int = FISHER_SAMPLES) -> dict[str, Tensor]:
    """The empirical Fisher diagonal E_i[(dL_i/dw)^2] of every analog layer's weight matrix ``(O, K)`` on the
    ideal model (the chip's reference): the mean over ``samples`` seeded training examples of each
    example's own squared gradient (a Gauss-Newton estimate of the loss Hessian's diagonal). Squaring the
    gradient of a batch mean instead would shrink it by the batch size and add cross terms."""
    x, y = data.train
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=gen)[:samples]
    acc: dict[str, Tensor] = {}
    for i in idx.tolist():
        for name, g in chip.reference_grads(x[i:i + 1], y[i:i + 1], data.task.loss).items():
            acc[name] = acc[name] + g**2 if name in acc else g**2
    return {k: v / max(1, len(idx)) for k, v in acc.items()}


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Index batches of one epoch over ``n`` examples, in a seeded random order."""
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


class Method(ABC):
    """A recovery method. Subclasses set ``name`` and implement :meth:`apply`. ``changes_chip``: it changes the
    chips' cells or registers after programming (``recover`` then guards it, see :mod:`.guard`); training
    methods change the model instead."""

    name = ""
    changes_chip = True

    @property
    def needs_labels(self) -> bool:
        """Whether :meth:`apply` reads ``TaskData.train``'s labels (``auto`` with ``labels=False`` runs only
        chains of methods that do not)."""
        return True

    @abstractmethod
    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        """Recover in place on every chip of ``chip``."""


METHODS: Registry[Method] = Registry("method")
register = METHODS.register  # class decorator: the method by its ``name``


def names() -> list[str]:
    return METHODS.names()


def get(name: str, **options: Any) -> Method:
    """A method by name with its options, e.g. ``get("write-verify", fraction=0.1)``."""
    cls = METHODS.get(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise NvcimError(f"method '{name}': bad option ({e})") from None


@dataclass
class RecoveryReport:
    """Accuracy before and after a chain of methods, and what it cost. ``reverted``: per guarded method of the
    chain, the chips it would have left worse and that were put back (see :mod:`.guard`)."""

    methods: list[str]
    before: EvalResult
    after: EvalResult
    cost: Cost
    reverted: list[tuple[str, int]] = field(default_factory=list)

    @property
    def recovery_ratio(self) -> float:
        """(after - degraded) / (ideal - degraded) of the mean accuracy (or the task's metric: the signs
        cancel for a lower-is-better one), with the ideal value of the model as it was before recovery
        (training methods change the model); nan when nothing was lost."""
        lost = self.before.ideal_accuracy - self.before.accuracy.mean  # negative for a lower-is-better metric
        sign = 1.0 if self.before.metric.get("higher_is_better", True) else -1.0
        return (self.after.accuracy.mean - self.before.accuracy.mean) / lost if sign * lost > 1e-12 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = self.after.to_dict()
        d.update({"methods": self.methods, "degraded_accuracy": self.before.accuracy.to_dict(),
                  "ideal_accuracy_before": self.before.ideal_accuracy,
                  "cost": self.cost.to_dict(), "recovery_ratio": self.recovery_ratio,
                  "reverted_chips": [{"method": m, "chips": n} for m, n in self.reverted]})
        return d

    def summary(self) -> str:
        back = ", ".join(f"{m} {n}" for m, n in self.reverted if n)
        a, b = self.after, self.before
        spread = f"{100 * a.accuracy.std:.2f} %" if a.metric.get("unit") == "%" else f"{a.accuracy.std:.3g}"
        return (f"{'+'.join(self.methods)}: {b.fmt(b.accuracy.mean)} -> {a.fmt(a.accuracy.mean)} ± {spread} "
                f"(ideal {b.fmt(b.ideal_accuracy)}, recovery ratio {self.recovery_ratio:.2f})"
                + (f"; chips put back by the guard: {back}" if back else ""))


def recover(model: AnalogModel, methods: list[Method | str], data: TaskData, test: tuple[Tensor, Tensor],
            batch_size: int = 500, progress: bool = True, guard: bool = True,
            metric: str | Metric | None = None) -> RecoveryReport:
    """Evaluate ``model``, apply ``methods`` in order on all its chips, evaluate again.

    A part of the training data is held out as check inputs (:meth:`TaskData.with_check`) unless ``data``
    has them. With ``guard`` (default), every method that changes chips keeps, per chip, the better of
    the states before and after it on those inputs (:mod:`.guard`); ``guard=False`` applies it blindly."""
    from .guard import guarded_apply, labelled_check

    chain = [get(m) if isinstance(m, str) else m for m in methods]
    if not chain:
        raise NvcimError("no recovery method given")
    score = get_metric(metric if metric is not None else data.metric)
    if data.metric is None and not isinstance(score, TopK):
        data = TaskData(data.train, data.unlabelled, data.check, score)  # the methods train on this task
    data = data.with_check()
    if not model.is_calibrated():
        model.calibrate(data.inputs(256))
    before = evaluate(model, test, batch_size=batch_size, progress=progress, metric=score)
    chip = SimulatedChip(model)
    data = labelled_check(chip, data)
    cost = Cost()
    reverted = []
    for m in chain:
        t0 = time.perf_counter()
        if guard and m.changes_chip:
            c, g = guarded_apply(m, chip, data, progress=progress)
            reverted.append((m.name, int(g.reverted.sum())))
        else:
            c = m.apply(chip, data, progress=progress)
        c.wall_time_s = time.perf_counter() - t0
        cost = cost + c
    after = evaluate(model, test, batch_size=batch_size, progress=progress, metric=score)
    return RecoveryReport([m.name for m in chain], before, after, cost, reverted)
