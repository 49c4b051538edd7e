"""Random (or importance-based) sparse SRAM adaptation (Charan et al., DAC 2020 / JxCDC 2020).

A fixed set of x % of weight positions (the same on every chip, chosen at design time) gets a digital SRAM
copy whose output is added to the crossbar's: y = chip(x) + (M * W_sram) x. On each chip, only W_sram is
trained, with labels, through the chip's own forward pass (straight-through for the converters); the
RRAM cells are never written. The SRAM weights are digital state the method owns; it places them in the
simulated layers directly so that gradients flow through the chip's forward pass. Positions are random,
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
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..chip.interface import Chip
from ..chip.model import AnalogModel
from ..errors import NvcimError
from .base import Cost, Method, TaskData, read_back, register, shuffled_batches
from .write_verify import fisher_diagonal


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

    def masks(self, model: AnalogModel, data: TaskData) -> dict[str, torch.Tensor]:
        layers = model.analog_layers()
        if self.selection == "random":
            gen = torch.Generator().manual_seed(self.seed)
            scores = {lay.layer_name: torch.rand(lay.out_features, lay.k, generator=gen) for lay in layers}
        else:
            fisher = fisher_diagonal(model, data)
            scores = {lay.layer_name: lay.as_matrix(fisher[lay.layer_name] * lay.weight.detach() ** 2).cpu()
                      for lay in layers}
        flat = torch.cat([v.flatten() for v in scores.values()])
        k = max(1, int(round(self.fraction * flat.numel())))
        thresh = flat.topk(k).values.min()
        return {name: v >= thresh for name, v in scores.items()}

    def chip_masks(self, chip: Chip, model: AnalogModel, data: TaskData
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-chip masks (N, O, K) of the measured errors that cost most, and those errors (N, O, K)."""
        fisher = fisher_diagonal(model, data)
        errs, scores = {}, {}
        for lay in model.analog_layers():
            name = lay.layer_name
            pos, neg = read_back(chip, name, self.reads)
            w = lay.as_matrix(lay.weight.detach()).unsqueeze(0)
            errs[name] = (w - chip.decode(name, pos, neg).to(w)).detach()
            scores[name] = lay.as_matrix(fisher[name]).unsqueeze(0) * errs[name] ** 2
        flat = torch.cat([v.flatten(1) for v in scores.values()], dim=1)  # (N, all weights)
        k = max(1, int(round(self.fraction * flat.shape[1])))
        thresh = flat.topk(k, dim=1).values[:, -1:]  # each chip its own threshold
        return {n: v >= thresh.view(-1, 1, 1) for n, v in scores.items()}, errs

    def apply(self, chip: Chip, model: AnalogModel, data: TaskData, progress: bool = False) -> Cost:
        x, y = data.train[0][: self.samples], data.train[1][: self.samples]
        errs: dict[str, torch.Tensor] = {}
        if self.selection == "faults":
            masks, errs = self.chip_masks(chip, model, data)
        else:
            masks = self.masks(model, data)
        params = []
        total, chosen = 0, 0.0
        for lay in model.analog_layers():
            m = masks[lay.layer_name].to(lay.weight.device)
            lay.sram_mask = m
            init = (errs[lay.layer_name] * m).to(lay.weight) if errs else torch.zeros(
                model.chips, lay.out_features, lay.k, device=lay.weight.device)
            lay.sram_w = init.clone().requires_grad_(True)
            params.append(lay.sram_w)
            total += lay.out_features * lay.k
            chosen += float(m.sum()) / (model.chips if m.dim() == 3 else 1)
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        steps = 0
        bar = tqdm(range(self.epochs), desc="rsa", unit="epoch", disable=not progress, leave=False)
        try:
            for _ in bar:
                for idx in shuffled_batches(len(y), self.batch_size, gen):
                    xb, yb = x[idx].to(model.device), y[idx].to(model.device)
                    logits = model(xb)  # (N, B, classes): every chip, on-chip, fresh read noise
                    # one loss per chip, summed: each chip's SRAM weights get their own gradient
                    loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(model.chips), reduction="sum") / len(idx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
        finally:
            for lay in model.analog_layers():
                lay.sram_w = lay.sram_w.detach()
        where = (f", per chip from {self.reads} read-backs per cell (each entry also stores its address)"
                 if self.selection == "faults" else "")
        return Cost(sram_fraction=chosen / max(1, total), labelled_samples=len(y), finetune_steps=steps,
                    notes=[f"rsa: {100 * chosen / max(1, total):.1f} % SRAM weights ({self.selection}{where}), "
                           f"{steps} on-chip steps per chip"])
