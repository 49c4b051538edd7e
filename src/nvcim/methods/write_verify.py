"""Write-verify: full, or selective by sensitivity (SWIM, Yan et al. DAC 2022).

The iterative loop (program -> verify read -> re-pulse until |G_read - G_t| <= tol, at most ``max_pulses``
re-pulses) runs on the chip (:meth:`Chip.write_verify`). Selection ranks *weights* and verifies all cells
of the chosen ones, with one global threshold across layers:

- ``swim``: a diagonal Fisher (Gauss-Newton) estimate of the loss Hessian, H_ii ~ E[g_i^2], from the ideal
  model's gradients on labelled training batches, times max|W|^2 of the layer, i.e. the expected loss
  increase from a weight error proportional to the layer's range. (Our reading of SWIM's second-derivative
  sensitivity; SWIM assumes the trained model and its data are known.)
- ``expected``: the same Fisher diagonal times the weight's *expected* squared programming error,
  E[dw_i^2] = sum over its cells of (decode factor x datasheet write spread at the cell's target)^2, i.e. the
  expected loss increase that verifying the weight removes. It differs from ``swim`` where the spread
  depends on the level (bit-sliced or state-dependent cells: a cell at g_min cannot go below 0 S). Our
  design, not SWIM's; it uses the device model (the datasheet), not the chip's hidden state.
- ``magnitude``: |w| / max|W|;  ``random``: a fixed random order (baselines in SWIM).

``cells=True`` (our extension, with ``expected``): rank *cells* rather than weights, each by the Fisher
diagonal of its weight times its own expected squared contribution (decode factor x write spread)^2, and
verify the global top ``fraction`` of cells. With bit slicing the error of a weight is dominated by its
high-order slices (the top 1-bit slice of an 8-bit weight carries 3/4 of its variance), so the same pulse
budget covers the high-order cells of many more weights. Differential mapping only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..chip.interface import Chip
from ..chip.layers import AnalogLayer
from ..chip.model import AnalogModel
from ..devices import get_model
from ..errors import NvcimError
from .base import Cost, Method, TaskData, decode_factors, register


def fisher_diagonal(model: AnalogModel, data: TaskData, batches: int = 32, batch_size: int = 16
                    ) -> dict[str, Tensor]:
    """E[(dL/dw)^2] per weight of every analog layer, on the ideal (digital) model."""
    layers = model.analog_layers()
    acc = {layer.layer_name: torch.zeros_like(layer.weight) for layer in layers}
    x, y = data.train
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=gen)[: batches * batch_size]
    from ..chip.context import DigitalPass

    model._set(DigitalPass())
    try:
        for i in range(0, len(idx), batch_size):
            b = idx[i:i + batch_size]
            model.net.zero_grad(set_to_none=True)
            F.cross_entropy(model.net(x[b].to(model.device)), y[b].to(model.device)).backward()
            for layer in layers:
                if layer.weight.grad is not None:
                    acc[layer.layer_name] += layer.weight.grad.detach() ** 2
    finally:
        model._set(None)
        model.net.zero_grad(set_to_none=True)
    n = max(1, (len(idx) + batch_size - 1) // batch_size)
    return {k: v / n for k, v in acc.items()}


@register
class WriteVerify(Method):
    """Program-verify-re-pulse loop on all weights (fraction = 1) or the most sensitive ones (SWIM).

    Options: ``fraction`` (0, 1], ``sensitivity`` 'swim' | 'expected' | 'magnitude' | 'random', ``tol``
    (fraction of g_max - g_min), ``max_pulses``.
    """

    name = "write-verify"

    def __init__(self, fraction: float = 1.0, sensitivity: str = "swim", tol: float = 0.03, max_pulses: int = 20,
                 seed: int = 0, cells: bool = False) -> None:
        if cells and sensitivity != "expected":
            raise NvcimError("write-verify.cells = true ranks cells by their expected error: it needs "
                             "sensitivity = 'expected'")
        self.cells = cells
        if not 0.0 < fraction <= 1.0:
            raise NvcimError(f"write-verify.fraction = {fraction} is invalid: allowed (0, 1]")
        if sensitivity not in ("swim", "expected", "magnitude", "random"):
            raise NvcimError(f"write-verify.sensitivity = {sensitivity!r} is invalid: allowed 'swim', "
                             "'expected', 'magnitude', 'random'")
        if not 0.0 < tol <= 1.0:
            raise NvcimError(f"write-verify.tol = {tol} is invalid: allowed (0, 1] of g_max - g_min")
        if max_pulses < 1:
            raise NvcimError(f"write-verify.max_pulses = {max_pulses} is invalid: allowed >= 1")
        self.fraction, self.sensitivity, self.tol, self.max_pulses, self.seed = (
            fraction, sensitivity, tol, max_pulses, seed)

    def scores(self, model: AnalogModel, data: TaskData, chip: Chip | None = None) -> dict[str, Tensor]:
        """Sensitivity of every weight, comparable across layers (``expected`` needs the chip's targets)."""
        layers = model.analog_layers()
        if self.sensitivity == "expected":
            if chip is None:
                raise NvcimError("write-verify: sensitivity 'expected' needs the chip")
            fisher = fisher_diagonal(model, data)
            return {lay.layer_name: fisher[lay.layer_name] * lay.from_matrix(expected_sq_error(chip, lay, model).to(
                fisher[lay.layer_name])) for lay in layers}
        if self.sensitivity == "swim":
            fisher = fisher_diagonal(model, data)
            return {lay.layer_name: fisher[lay.layer_name] * lay.weight.detach().abs().max() ** 2
                    for lay in layers}
        if self.sensitivity == "magnitude":
            return {lay.layer_name: lay.weight.detach().abs() / lay.weight.detach().abs().max().clamp_min(1e-30)
                    for lay in layers}
        gen = torch.Generator().manual_seed(self.seed)
        return {lay.layer_name: torch.rand(lay.weight.shape, generator=gen) for lay in layers}

    def select(self, model: AnalogModel, data: TaskData, chip: Chip | None = None) -> dict[str, Tensor]:
        """Boolean mask over each layer's weights: the global top ``fraction``."""
        layers = model.analog_layers()
        if self.fraction >= 1.0:
            return {lay.layer_name: torch.ones_like(lay.weight, dtype=torch.bool) for lay in layers}
        sc = self.scores(model, data, chip)
        flat = torch.cat([v.flatten().cpu() for v in sc.values()])
        k = max(1, int(round(self.fraction * flat.numel())))
        thresh = flat.topk(k).values.min()
        return {name: (v >= thresh) for name, v in sc.items()}

    def cell_masks(self, chip: Chip, model: AnalogModel, data: TaskData) -> dict[str, tuple[Tensor, Tensor]]:
        """(pos, neg) cell masks (S, O, K) of the global top ``fraction`` of cells by expected loss."""
        fisher = fisher_diagonal(model, data)
        scores: dict[str, tuple[Tensor, Tensor]] = {}
        for lay in model.analog_layers():
            if lay.config.mapping.scheme != "differential":
                raise NvcimError(f"write-verify.cells = true needs the differential mapping ({lay.layer_name} "
                                 "uses reference columns)")
            f = lay.as_matrix(fisher[lay.layer_name]).unsqueeze(0).cpu()
            per_cell = cell_sq_errors(chip, lay, model)
            scores[lay.layer_name] = (f * per_cell[0], f * per_cell[1])
        flat = torch.cat([v.flatten() for pair in scores.values() for v in pair])
        k = max(1, int(round(self.fraction * flat.numel())))
        thresh = flat.topk(k).values.min()
        return {name: (p >= thresh, q >= thresh) for name, (p, q) in scores.items()}

    def _apply_cells(self, chip: Chip, model: AnalogModel, data: TaskData) -> Cost:
        masks = self.cell_masks(chip, model, data)
        n = chip.n_chips
        pulses = torch.zeros(n)
        chosen = total = 0
        for name in chip.layer_names():
            mp, mn = masks[name]
            chosen += int(mp.sum() + mn.sum())
            total += mp.numel() + mn.numel()
            pulses += chip.write_verify(name, mp.unsqueeze(0).expand(n, *mp.shape),
                                        mn.unsqueeze(0).expand(n, *mn.shape), self.tol, self.max_pulses).double()
        return Cost(write_verify_pulses=float(pulses.mean()), verified_fraction=chosen / max(1, total),
                    labelled_samples=min(len(data.train[1]), 32 * 16),
                    notes=[f"write-verify ({100 * self.fraction:g} % of the cells by expected loss), tol "
                           f"{self.tol:g} of the range, <= {self.max_pulses} pulses"])

    def apply(self, chip: Chip, model: AnalogModel, data: TaskData, progress: bool = False) -> Cost:
        if self.cells and self.fraction < 1.0:
            return self._apply_cells(chip, model, data)
        masks = self.select(model, data, chip)
        layers = {lay.layer_name: lay for lay in model.analog_layers()}
        n = chip.n_chips
        pulses = torch.zeros(n)
        chosen = total = 0
        for name in chip.layer_names():
            wmask = layers[name].as_matrix(masks[name])
            chosen += int(wmask.sum())
            total += wmask.numel()
            pos_t, neg_t = chip.targets(name)
            mpos = wmask.unsqueeze(0).expand(pos_t.shape).unsqueeze(0).expand(n, *pos_t.shape)
            mneg = _neg_mask(layers[name], wmask, neg_t.shape, n)
            pulses += chip.write_verify(name, mpos, mneg, self.tol, self.max_pulses).double()
        label = "full" if self.fraction >= 1 else f"{100 * self.fraction:g} % by {self.sensitivity}"
        return Cost(write_verify_pulses=float(pulses.mean()), verified_fraction=chosen / max(1, total),
                    labelled_samples=min(len(data.train[1]), 32 * 16)  # fisher_diagonal's default sample
                    if self.sensitivity in ("swim", "expected") and self.fraction < 1 else 0,
                    notes=[f"write-verify ({label}), tol {self.tol:g} of the range, <= {self.max_pulses} pulses"])


def _neg_mask(layer: AnalogLayer, wmask: Tensor, shape: torch.Size, n: int) -> Tensor:
    """Differential partners follow their weight; reference columns are verified whole when any weight of
    their tile is chosen (they set every column's zero)."""
    if layer.config.mapping.scheme == "differential":
        return wmask.unsqueeze(0).expand(shape).unsqueeze(0).expand(n, *shape)
    cols = layer.config.array.cols
    tiles = torch.stack([wmask[t * cols:(t + 1) * cols].any(0) for t in range(shape[1])])
    return tiles.unsqueeze(0).expand(shape).unsqueeze(0).expand(n, *shape)


def expected_sq_error(chip: Chip, layer: AnalogLayer, model: AnalogModel) -> Tensor:
    """E[dw^2] per weight ``(out, K)`` of one programming write, from the datasheet spread of each cell at its
    target level and the periphery's decode factor of its slice and column."""
    pos, neg = cell_sq_errors(chip, layer, model)
    return (pos + neg).sum(0)  # (O, K)


def cell_sq_errors(chip: Chip, layer: AnalogLayer, model: AnalogModel) -> tuple[Tensor, Tensor]:
    """Each cell's expected squared contribution to its weight's error, (S, O, K) for the pos and the neg
    cells (zeros for shared reference columns, which are verified whole)."""
    name = layer.layer_name
    spread = get_model(model.config.device, model.config.variability).write_spread
    pos_t, neg_t = (t.cpu() for t in chip.targets(name))  # (S, O', K)
    f2 = decode_factors(chip, name).unsqueeze(-1) ** 2  # (S, O, 1)
    pos = f2 * spread(pos_t) ** 2
    if layer.config.mapping.scheme == "differential":
        return pos, f2 * spread(neg_t) ** 2
    return pos, torch.zeros_like(pos)
