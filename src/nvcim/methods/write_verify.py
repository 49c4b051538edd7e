"""Write-verify: full, or selective by sensitivity (SWIM, Yan et al. DAC 2022).

The iterative loop (program -> verify read -> re-pulse until |G_read - G_t| <= tol, at most ``max_pulses``
re-pulses) runs on the chip (:meth:`Chip.write_verify`). Selection ranks *weights* and verifies all cells
of the chosen ones, with one global threshold across layers:

- ``swim``: SWIM's sensitivity as the field guide gives it, H_ii max|W| + |w_i|: the diagonal of the loss
  Hessian, estimated by the per-example empirical Fisher H_ii ~ E_n[(dL_n/dw_i)^2] on the ideal model and
  labelled training examples, times the layer's max|W| (the scale of a programming error, which is
  proportional to the layer's range), plus the weight's magnitude. (SWIM assumes the trained model and its
  data are known.)
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

Stuck cells: a cell whose verify reads stay at a rail (g_min or g_max, far from its target) for
``give_up`` pulses in a row is declared stuck; it gets no more pulses, and the cost report counts it.
(Without this, every stuck cell burns ``max_pulses`` pulses to no effect: on Charan's chip, with 10.8 %
stuck cells, that is most of full write-verify's pulses.) Write-verify cannot repair a stuck cell; chain
it with ``map-correct`` (re-targets the stuck cell's differential partner) or ``rsa`` with
``selection='faults'`` (SRAM weights at the worst measured errors).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..chip.interface import Chip
from ..errors import NvcimError
from .base import FISHER_SAMPLES, Cost, Method, TaskData, decode_factors, fisher_diagonal, register


@register
class WriteVerify(Method):
    """Program-verify-re-pulse loop on all weights (fraction = 1) or the most sensitive ones (SWIM).

    Options: ``fraction`` (0, 1], ``sensitivity`` 'swim' | 'expected' | 'magnitude' | 'random', ``tol``
    (fraction of g_max - g_min), ``max_pulses``, ``give_up`` (pulses at a rail before a cell is declared
    stuck; 0 = never).
    """

    name = "write-verify"

    def __init__(self, fraction: float = 1.0, sensitivity: str = "swim", tol: float = 0.03, max_pulses: int = 20,
                 seed: int = 0, cells: bool = False, give_up: int = 3) -> None:
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
        if give_up < 0:
            raise NvcimError(f"write-verify.give_up = {give_up} is invalid: allowed 0 (never) or >= 1 pulses")
        self.give_up = give_up
        self.stuck: dict[str, tuple[Tensor, Tensor]] = {}  # per layer: (pos, neg) cells given up as stuck
        self.fraction, self.sensitivity, self.tol, self.max_pulses, self.seed = (
            fraction, sensitivity, tol, max_pulses, seed)

    @property
    def needs_labels(self) -> bool:
        """Selective verification by a Fisher sensitivity reads labels; full, magnitude and random do not."""
        return self.fraction < 1.0 and self.sensitivity in ("swim", "expected")

    def scores(self, chip: Chip, data: TaskData) -> dict[str, Tensor]:
        """Sensitivity of every weight ``(O, K)``, comparable across layers."""
        weights = {name: chip.weight_matrix(name) for name in chip.layer_names()}
        if self.sensitivity == "expected":
            fisher = fisher_diagonal(chip, data)
            return {name: fisher[name] * expected_sq_error(chip, name).to(fisher[name]) for name in weights}
        if self.sensitivity == "swim":
            fisher = fisher_diagonal(chip, data)
            return {name: swim_sensitivity(fisher[name], w) for name, w in weights.items()}
        if self.sensitivity == "magnitude":
            return {name: w.abs() / w.abs().max().clamp_min(1e-30) for name, w in weights.items()}
        gen = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(w.shape, generator=gen) for name, w in weights.items()}

    def select(self, chip: Chip, data: TaskData) -> dict[str, Tensor]:
        """Boolean mask ``(O, K)`` over each layer's weights: the global top ``fraction``."""
        if self.fraction >= 1.0:
            return {name: torch.ones_like(chip.weight_matrix(name), dtype=torch.bool) for name in chip.layer_names()}
        sc = self.scores(chip, data)
        flat = torch.cat([v.flatten().cpu() for v in sc.values()])
        k = max(1, int(round(self.fraction * flat.numel())))
        thresh = flat.topk(k).values.min()
        return {name: (v >= thresh) for name, v in sc.items()}

    def cell_masks(self, chip: Chip, data: TaskData) -> dict[str, tuple[Tensor, Tensor]]:
        """(pos, neg) cell masks (S, O, K) of the global top ``fraction`` of cells by expected loss."""
        for name in chip.layer_names():
            if chip.mapping(name).reference:
                raise NvcimError(f"write-verify.cells = true needs the differential mapping ({name} "
                                 "uses reference columns)")
        fisher = fisher_diagonal(chip, data)
        scores: dict[str, tuple[Tensor, Tensor]] = {}
        for name in chip.layer_names():
            f = fisher[name].unsqueeze(0).cpu()
            per_cell = cell_sq_errors(chip, name)
            scores[name] = (f * per_cell[0], f * per_cell[1])
        flat = torch.cat([v.flatten() for pair in scores.values() for v in pair])
        k = max(1, int(round(self.fraction * flat.numel())))
        thresh = flat.topk(k).values.min()
        return {name: (p >= thresh, q >= thresh) for name, (p, q) in scores.items()}

    def _apply_cells(self, chip: Chip, data: TaskData) -> Cost:
        masks = self.cell_masks(chip, data)
        n = chip.n_chips
        pulses = torch.zeros(n)
        chosen = total = 0
        self.stuck = {}
        for name in chip.layer_names():
            mp, mn = masks[name]
            chosen += int(mp.sum() + mn.sum())
            total += mp.numel() + mn.numel()
            pulses += self._verify(chip, name, mp.unsqueeze(0).expand(n, *mp.shape),
                                   mn.unsqueeze(0).expand(n, *mn.shape))
        return Cost(write_verify_pulses=float(pulses.mean()), verified_fraction=chosen / max(1, total),
                    labelled_samples=min(len(data.train[1]), FISHER_SAMPLES),
                    notes=[f"write-verify ({100 * self.fraction:g} % of the cells by expected loss), tol "
                           f"{self.tol:g} of the range, <= {self.max_pulses} pulses{self._stuck_note(n)}"])

    def _verify(self, chip: Chip, name: str, mpos: Tensor, mneg: Tensor) -> Tensor:
        v = chip.write_verify(name, mpos, mneg, self.tol, self.max_pulses, give_up=self.give_up)
        self.stuck[name] = (v.stuck_pos, v.stuck_neg)
        return v.pulses.double()

    def _stuck_note(self, n: int) -> str:
        if not self.give_up:
            return ""
        found = sum(int(p.sum() + q.sum()) for p, q in self.stuck.values()) / max(1, n)
        return f"; {found:.0f} stuck cells per chip found and given up after {self.give_up} pulses at a rail"

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        if self.cells and self.fraction < 1.0:
            return self._apply_cells(chip, data)
        masks = self.select(chip, data)
        n = chip.n_chips
        self.stuck = {}
        pulses = torch.zeros(n)
        chosen = total = 0
        for name in chip.layer_names():
            wmask = masks[name].cpu()
            chosen += int(wmask.sum())
            total += wmask.numel()
            pos_t, neg_t = chip.targets(name)
            mpos = wmask.unsqueeze(0).expand(pos_t.shape).unsqueeze(0).expand(n, *pos_t.shape)
            mneg = _neg_mask(chip, name, wmask, neg_t.shape, n)
            pulses += self._verify(chip, name, mpos, mneg)
        label = "full" if self.fraction >= 1 else f"{100 * self.fraction:g} % by {self.sensitivity}"
        return Cost(write_verify_pulses=float(pulses.mean()), verified_fraction=chosen / max(1, total),
                    labelled_samples=min(len(data.train[1]), FISHER_SAMPLES)  # fisher_diagonal's sample
                    if self.sensitivity in ("swim", "expected") and self.fraction < 1 else 0,
                    notes=[f"write-verify ({label}), tol {self.tol:g} of the range, <= {self.max_pulses} pulses"
                           f"{self._stuck_note(n)}"])


def swim_sensitivity(fisher: Tensor, w: Tensor) -> Tensor:
    """SWIM's score of each weight of one layer: H_ii max|W| + |w_i| (field guide, section 5)."""
    return fisher * w.abs().max() + w.abs().to(fisher)


def _neg_mask(chip: Chip, name: str, wmask: Tensor, shape: torch.Size, n: int) -> Tensor:
    """Differential partners follow their weight; reference columns are verified whole when any weight of
    their tile is chosen (they set every column's zero)."""
    if not chip.mapping(name).reference:
        return wmask.unsqueeze(0).expand(shape).unsqueeze(0).expand(n, *shape)
    cols = chip.config.array.cols
    tiles = torch.stack([wmask[t * cols:(t + 1) * cols].any(0) for t in range(shape[1])])
    return tiles.unsqueeze(0).expand(shape).unsqueeze(0).expand(n, *shape)


def expected_sq_error(chip: Chip, name: str) -> Tensor:
    """E[dw^2] per weight ``(out, K)`` of one programming write, from the datasheet spread of each cell at its
    target level and the periphery's decode factor of its slice and column."""
    pos, neg = cell_sq_errors(chip, name)
    return (pos + neg).sum(0)  # (O, K)


def cell_sq_errors(chip: Chip, name: str) -> tuple[Tensor, Tensor]:
    """Each cell's expected squared contribution to its weight's error, (S, O, K) for the pos and the neg
    cells (zeros for shared reference columns, which are verified whole)."""
    spread = chip.device_model().write_spread
    pos_t, neg_t = (t.cpu() for t in chip.targets(name))  # (S, O', K)
    f2 = decode_factors(chip, name).unsqueeze(-1) ** 2  # (S, O, 1)
    pos = f2 * spread(pos_t) ** 2
    if not chip.mapping(name).reference:
        return pos, f2 * spread(neg_t) ** 2
    return pos, torch.zeros_like(pos)
