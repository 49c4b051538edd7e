"""Programming writes of one layer's cells: every cell of a block of chips (evaluation chips, from
counter-based keys; training chips, from the fast generator), and re-writes of chosen cells.

A :class:`CellWriter` knows what the draws are keyed on (config, seed, layer name) and where the cells lie
(:class:`~nvcim.chip.geometry.TileGeometry`); it holds no chip state. :class:`~nvcim.chip.crossbar.Crossbar`
owns the state and calls it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config.schema import ChipConfig
from ..devices import ProgrammingModel, drift_factor, get_model, has_drift, round_to_levels
from ..mapping import Mapped
from . import programming, rng
from .geometry import TileGeometry
from .programming import SideKeys, WriteSpec, cells_from_draws, drift_compensation, write_side

Targets = dict[str, tuple[Tensor, Tensor | None]]  # per side: the targets rounded to levels, the level index


@dataclass
class Written:
    """One programming of every cell of a block of chips, per side ('pos', 'neg'): conductances at t0
    (faults applied), fault codes, drift factors (t_read/t0)^-nu (empty without drift); and the chips' drift
    compensation."""

    g0: dict[str, Tensor]
    codes: dict[str, Tensor]
    factor: dict[str, Tensor]
    compensation: Tensor


@dataclass
class CellWriter:
    config: ChipConfig
    name: str  # the layer's, part of every draw's key
    seed: int
    geometry: TileGeometry
    compiled: bool = False  # per-cell draws under torch.compile (the same bits)

    def targets(self, m: Mapped) -> Targets:
        return programming.level_targets(m, self.config.device, self.config.variability)

    def between(self, ids: Tensor, shape: tuple[int, ...], reference: bool) -> Tensor:
        g = self.geometry
        return programming.between_chip_normals(self.config.variability, self.seed, self.name, ids, shape,
                                                reference, g.tile_index(), (g.row_tiles, g.n_col_tiles), g.cols)

    def write_all(self, m: Mapped, ids: Tensor, perm: Tensor | None, censor: float = 0.0, stream: bool = False,
                  targets: Targets | None = None, out: dict[str, tuple[Tensor, ...]] | None = None) -> Written:
        """One programming of every cell of chips ``ids`` to the mapping ``m``, on the CPU. The one programming
        function of evaluation chips (counter-based draws, ``perm`` (n, K) the row routing, None: identity)
        and of training chips (``stream``: one fresh chip from the fast generator, without fault codes;
        ``censor``: draws clipped at that many sigma). ``targets``: :meth:`targets` of ``m`` if the caller
        has them; ``out``: per side the CPU tensors that evaluation chips are written into (conductances,
        fault codes, drift factors)."""
        cfg = self.config
        spec = WriteSpec(cfg.device, cfg.variability, censor, has_drift(cfg.device))
        targets = targets or self.targets(m)
        g0, codes, factor, gt = {}, {}, {}, {}
        for side, target in (("pos", m.pos), ("neg", m.neg)):
            g_t, lvl = targets[side]
            shape = tuple(target.shape)
            z_chip = self.between(ids, shape, side == "neg" and m.reference)
            # right-censoring acts on the *weight's* error: w ~ G+ - G-, so the pos side's draws are clipped
            # above and the neg side's below (WriteSpec.censor's sign)
            spec = dataclasses.replace(spec, censor=censor if side == "pos" else -censor)

            def key(purpose: str, side: str = side) -> int:
                return rng.key(self.seed, self.name, side, purpose)

            if stream:  # a training chip: plain generator draws, eager
                def draw(kind: str, purpose: str, shape: tuple[int, ...] = shape) -> Tensor:
                    return rng.draw_stream(kind, key(purpose), int(ids[0]), shape)

                model = get_model(spec.device, spec.variability)
                written: tuple[Tensor, ...] = cells_from_draws(spec, model, g_t, lvl, draw("uniform", "fault"),
                                                               draw("normal", "program"), z_chip,
                                                               draw("normal", "drift") if spec.has_drift else None,
                                                               codes=False)
            else:
                keys = SideKeys(rng.chip_keys(key("fault"), ids), rng.chip_keys(key("program"), ids),
                                rng.chip_keys(key("drift"), ids) if spec.has_drift else None)
                # faults and drift exponents belong to physical cells: drawn in physical order, then seen
                # through the row routing (identity unless map-correct moved rows)
                rows = None if perm is None else perm.view(len(ids), *([1] * (len(shape) - 1)), -1).expand(
                    len(ids), *shape)
                assert out is not None
                written = out[side]
                write_side(spec, g_t, lvl, z_chip, keys, rows, written, self.compiled)
            g0[side], codes[side], factor[side] = written
            gt[side] = g0[side] * factor[side] if factor[side].numel() else g0[side]
        return Written(g0, codes, factor, drift_compensation(cfg.device.drift.compensate, m, g0, gt))

    def sample(self, side: str, ids: Tensor, purpose: str, target: Tensor, reference: bool) -> Tensor:
        """One re-programming write of every cell of ``side`` on chips ``ids`` (fresh draws per purpose) to
        per-chip ``target`` conductances (N, S, O', K), on the CPU (no faults: stuck cells keep their state).
        ``reference``: the side is the mapping's reference columns."""
        model, (g_t, lvl) = self._rounded(target)
        shape = tuple(target.shape[1:])
        z_cell = rng.draw("normal", rng.key(self.seed, self.name, side, purpose), ids, shape, compiled=self.compiled)
        z_chip = self.between(ids, shape, side == "neg" and reference)
        return model.sample(g_t, lvl, z_cell, z_chip)

    def sample_drift(self, side: str, ids: Tensor, purpose: str, target: Tensor) -> Tensor:
        """Drift factors (t_read/t0)^-nu of cells re-programmed to ``target`` (N, S, O', K) on chips ``ids``:
        a new write melts and re-forms a PCM cell's amorphous region, so its drift exponent nu is drawn
        again (and its mean follows the new target, as in IBM's model)."""
        _, (g_t, _) = self._rounded(target)
        z_nu = rng.draw("normal", rng.key(self.seed, self.name, side, purpose + "-drift"), ids,
                        tuple(target.shape[1:]), compiled=self.compiled)
        return drift_factor(g_t, z_nu, self.config.device).expand_as(z_nu)

    def _rounded(self, target: Tensor) -> tuple[ProgrammingModel, tuple[Tensor, Tensor | None]]:
        """The programming model and re-write targets (N, S, O', K) clipped to the window and rounded to
        its levels (with their level index), on the CPU."""
        cfg = self.config
        model = get_model(cfg.device, cfg.variability)
        return model, round_to_levels(target.cpu().clamp(cfg.device.g_min, cfg.device.g_max), model.levels())

    def write_chips(self, m: Mapped, targets: Targets, ids: Tensor, perm: Tensor | None, now: dict[str, Tensor],
                    dtype: torch.dtype, chunk: int = 0) -> tuple[dict[str, Tensor], Tensor]:
        """Every cell of chips ``ids`` (perm: their row routing, None: identity) written chunk by chunk into
        CPU buffers, by cell-state name (those of ``now`` reused where they fit); and the chips' drift
        compensation. ``chunk``: chips per write (0: as many as keep each float temporary within 32 MiB,
        glibc's heap limit, up to 64; the draws are counter-based, so the chunking changes no number)."""
        n = len(ids)
        parts = -(-n // (chunk or max(1, min(64, 2**23 // max(1, m.pos.numel())))))
        bounds = [round(i * n / parts) for i in range(parts + 1)]  # even chunks: 3, 3, 2, 2, not 3, 3, 3, 1
        bufs, drifts = {}, has_drift(self.config.device)
        for name, t in now.items():  # float cells in the weights' format (float64 after model.double())
            kind = torch.int8 if name.startswith("faults") else dtype
            want = (0,) if name.startswith("drift") and not drifts else (n, *targets[name[-3:]][0].shape[1:])
            bufs[name] = t if tuple(t.shape) == want and t.dtype == kind and t.device.type == "cpu" else \
                torch.empty(want, dtype=kind)
        comp = torch.empty(n, dtype=dtype)
        for a, b in zip(bounds, bounds[1:]):
            out = {side: tuple(bufs[f"{k}_{side}"][a:b] if bufs[f"{k}_{side}"].numel() else bufs[f"{k}_{side}"]
                               for k in ("g", "faults", "drift")) for side in ("pos", "neg")}
            part = None if perm is None else perm[a:b]
            comp[a:b] = self.write_all(m, ids[a:b], part, targets=targets, out=out).compensation
        return bufs, comp
