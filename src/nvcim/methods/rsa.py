"""Random (or importance-based) sparse SRAM adaptation (Charan et al., DAC 2020 / JxCDC 2020).

A fixed set of x % of weight positions (the same on every chip, chosen at design time) gets a digital SRAM
copy whose output is added to the crossbar's: y = chip(x) + (M * W_sram) x. On each chip, only W_sram is
trained, with labels, through the chip's own forward pass (straight-through for the converters); the
RRAM cells are never written. The SRAM weights are the chip's SRAM registers (``Chip.set_sram``), set from
trainable tensors, so that gradients flow through the chip's forward pass. Positions are random,
or the most important by a diagonal-Fisher saliency F_ii w_i^2 on the ideal model (the DAC 2020
follow-up's idea; our estimator).

``selection="faults"`` (our extension): positions are chosen *per chip* after reading the array back
(``reads`` averaged reads, decoded to weights): the x % with the largest F_ii (w_i - w_read,i)^2, i.e. the
measured errors that cost most loss, including stuck cells. Their SRAM weights start at the measured error
w_i - w_read,i (so the sum is right before any training), then train as above. The SRAM then also holds
each entry's address (counted in the cost note), as a sparse per-chip table rather than a fixed mask.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..chip.interface import Chip
from ..errors import NvcimError
from .base import Cost, Method, TaskData, fisher_diagonal, read_back, register, shuffled_batches


@register
class RSA(Method):
    """Sparse SRAM weights added to the crossbar output, trained per chip with labels; cells untouched.

    Options: ``fraction`` (x, default 0.05), ``selection`` 'random' | 'importance' | 'faults' (per chip, from
    read-back), ``epochs``, ``lr``, ``batch_size``, ``samples`` (labelled examples used on chip, the first N
    of the training set), ``reads`` (read-backs averaged for 'faults').
    """

    name = "rsa"

    def __init__(self, fraction: float = 0.05, selection: str = "random", epochs: int = 2, lr: float | None = None,
                 batch_size: int = 32, samples: int = 2048, seed: int = 0, reads: int = 4) -> None:
        if not 0 < fraction <= 1:
            raise NvcimError(f"rsa.fraction = {fraction} is invalid: allowed (0, 1]")
        if selection not in ("random", "importance", "faults"):
            raise NvcimError(f"rsa.selection = {selection!r} is invalid: allowed 'random', 'importance', "
                             "'faults'")
        if reads < 1:
            raise NvcimError(f"rsa.reads = {reads} is invalid: allowed >= 1")
        self.reads = reads
        # from zero, SRAM weights need a large step; started at the measured error ('faults'), a small one
        # (measured on digits LeNet-5: 1e-3 gives 0.97 of the loss back, 1e-2 0.92)
        lr = lr if lr is not None else (1e-3 if selection == "faults" else 1e-2)
        if epochs < 1 or lr <= 0 or batch_size < 1 or samples < 1:
            raise NvcimError("rsa: epochs, batch_size and samples must be >= 1 and lr > 0")
        self.fraction, self.selection, self.epochs, self.lr, self.batch_size, self.samples, self.seed = (
            fraction, selection, epochs, lr, batch_size, samples, seed)

    def masks(self, chip: Chip, data: TaskData) -> dict[str, torch.Tensor]:
        """Masks ``(O, K)``, the same on every chip: random, or the top F_ii w_i^2 of the ideal model."""
        weights = {name: chip.weight_matrix(name) for name in chip.layer_names()}
        if self.selection == "random":
            gen = torch.Generator().manual_seed(self.seed)
            scores = {name: torch.rand(w.shape, generator=gen) for name, w in weights.items()}
        else:
            fisher = fisher_diagonal(chip, data)
            scores = {name: (fisher[name] * w**2).cpu() for name, w in weights.items()}
        flat = torch.cat([v.flatten() for v in scores.values()])
        k = max(1, int(round(self.fraction * flat.numel())))
        thresh = flat.topk(k).values.min()
        return {name: v >= thresh for name, v in scores.items()}

    def chip_masks(self, chip: Chip, data: TaskData) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-chip masks (N, O, K) of the measured errors that cost most, and those errors (N, O, K)."""
        fisher = fisher_diagonal(chip, data)
        errs, scores = {}, {}
        for name in chip.layer_names():
            pos, neg = read_back(chip, name, self.reads)
            w = chip.weight_matrix(name).unsqueeze(0)
            errs[name] = (w - chip.decode(name, pos, neg).to(w)).detach()
            scores[name] = fisher[name].unsqueeze(0) * errs[name] ** 2
        flat = torch.cat([v.flatten(1) for v in scores.values()], dim=1)  # (N, all weights)
        k = max(1, int(round(self.fraction * flat.shape[1])))
        thresh = flat.topk(k, dim=1).values[:, -1:]  # each chip its own threshold
        return {n: v >= thresh.view(-1, 1, 1) for n, v in scores.items()}, errs

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        x, y = data.train[0][: self.samples], data.train[1][: self.samples]
        errs: dict[str, torch.Tensor] = {}
        if self.selection == "faults":
            masks, errs = self.chip_masks(chip, data)
        else:
            masks = self.masks(chip, data)
        params = {}
        total, chosen = 0, 0.0
        n = chip.n_chips
        for name in chip.layer_names():
            m = masks[name].to(chip.device)
            w = chip.weight_matrix(name)
            init = (errs[name].to(w) * m) if errs else torch.zeros(n, *w.shape, dtype=w.dtype, device=w.device)
            params[name] = init.clone().requires_grad_(True)
            chip.set_sram(name, m, params[name])
            total += w.numel()
            chosen += float(m.sum()) / (n if m.dim() == 3 else 1)
        opt = torch.optim.Adam(list(params.values()), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        steps = 0
        bar = tqdm(range(self.epochs), desc="rsa", unit="epoch", disable=not progress, leave=False)
        try:
            for _ in bar:
                for idx in shuffled_batches(len(y), self.batch_size, gen):
                    xb, yb = x[idx].to(chip.device), y[idx].to(chip.device)
                    logits, _ = chip.infer(xb)  # (N, B, classes): every chip, on-chip, fresh read noise
                    # one loss per chip, summed: each chip's SRAM weights get their own gradient
                    loss = data.task.chip_loss(logits, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
        finally:
            for name in chip.layer_names():
                chip.set_sram(name, masks[name].to(chip.device), params[name].detach())
        where = (f", per chip from {self.reads} read-backs per cell (each entry also stores its address)"
                 if self.selection == "faults" else "")
        return Cost(sram_fraction=chosen / max(1, total), labelled_samples=len(y), finetune_steps=steps,
                    notes=[f"rsa: {100 * chosen / max(1, total):.1f} % SRAM weights ({self.selection}{where}), "
                           f"{steps} on-chip steps per chip"])
