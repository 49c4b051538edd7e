"""One programming write of every cell on one side of a layer's arrays, for a block of chips.

From a chip's counter-based keys to its cells in one pass: fault codes (a uniform per cell), the written
conductance (the device model on a normal per cell and the between-chip draw), stuck cells forced, and the
drift factor (t_read/t0)^-nu. Large blocks run it as one compiled loop (about 20x faster than eager on a
CPU, measured with ``bench/bench_convert.py``); it is plain arithmetic (:mod:`nvcim.arith`), so the
compiled and eager writes give the same bits and compiling changes no chip.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config.schema import DeviceConfig, VariabilityConfig
from ..devices import ProgrammingModel, drift_factor, fault_codes, get_model, round_to_levels
from ..mapping import Mapped
from . import rng
from .compiling import compiled_or_eager

COMPILE_MIN = 1 << 16  # cells per call from which the compiled loop (built once per spec, any shape) pays


@dataclass(frozen=True)
class WriteSpec:
    """What a write specialises on (the compiled loop is built once per spec)."""

    device: DeviceConfig
    variability: VariabilityConfig
    # right-censoring (Yan et al., ICCAD 2023): > 0 clips the cell and chip draws above +censor sigma (the
    # right tail), < 0 below censor sigma (a differential pair's negative side, whose high tail lowers the
    # weight); 0: no clipping. The other tail is left as drawn.
    censor: float = 0.0
    has_drift: bool = False


@dataclass
class SideKeys:
    """Chip keys (c,) of one side's draws: fault uniforms, write normals and drift normals."""

    fault: Tensor
    write: Tensor
    drift: Tensor | None


def cells_from_draws(spec: WriteSpec, model: ProgrammingModel, g_t: Tensor, level: Tensor | None, u: Tensor,
                     z_cell: Tensor, z_chip: Tensor, z_nu: Tensor | None,
                     codes: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Conductances at t0 with faults applied, fault codes and drift factors (empty without drift) of cells
    with targets ``g_t`` (rounded to ``level``), from their draws: ``u`` uniforms and ``z_cell``/``z_nu``
    normals (c, S, O', K), ``z_chip`` the between-chip normals (broadcastable). ``codes=False``: no fault
    codes (empty; a training chip needs only its conductances)."""
    d = spec.device
    fault = fault_codes(u, d) if codes else torch.zeros(0, dtype=torch.int8)
    if spec.censor > 0:
        z_cell, z_chip = z_cell.clamp(max=spec.censor), z_chip.clamp(max=spec.censor)
    elif spec.censor < 0:
        z_cell, z_chip = z_cell.clamp(min=spec.censor), z_chip.clamp(min=spec.censor)
    # faults forced by selects on the uniforms, not on the int8 codes (what apply_faults does, several times
    # faster in the compiled loop)
    sa0, stuck = u < d.faults.sa0, u < d.faults.sa0 + d.faults.sa1
    g0 = torch.where(stuck, torch.where(sa0, d.g_min, d.g_max), model.sample(g_t, level, z_cell, z_chip))
    if z_nu is None:
        return g0, fault, torch.ones(0, device=g0.device)
    return g0, fault, torch.where(stuck, 1.0, drift_factor(g_t, z_nu, d).expand_as(z_nu))


def _keyed(spec: WriteSpec, model: ProgrammingModel, g_t: Tensor, level: Tensor | None, z_chip: Tensor,
           fault: Tensor, write: Tensor, drift_k: Tensor | None, idx_u: Tensor, idx_z: Tensor,
           rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The write of chips with keys ``fault``/``write``/``drift_k`` (c,): draws from the keys (what
    :func:`rng.draw` computes), ``rows`` the row routing of the physical draws (faults, drift)."""
    shape = (fault.shape[0], *g_t.shape[1:])
    n = math.prod(shape[1:])

    def physical(t: Tensor) -> Tensor:
        return t if rows is None else t.gather(-1, rows)

    u = physical(rng._uniforms(fault, idx_u, n).view(shape))
    z = rng._normals(write, idx_z, n).view(shape)
    z_nu = None if drift_k is None else physical(rng._normals(drift_k, idx_z, n).view(shape))
    return cells_from_draws(spec, model, g_t, level, u, z, z_chip, z_nu)


@functools.lru_cache(maxsize=16)
def _loop(spec: WriteSpec, compiled: bool) -> Callable[..., None]:
    model = get_model(spec.device, spec.variability)

    def write(out_g: Tensor, out_codes: Tensor, out_factor: Tensor, *a: Tensor | None) -> None:
        g0, codes, factor = _keyed(spec, model, *a)  # type: ignore[arg-type]
        out_g.copy_(g0)  # into the state: compiled, the loop stores there directly (no temporary, no copy)
        out_codes.copy_(codes)
        if out_factor.numel():
            out_factor.copy_(factor)

    if not compiled:
        return write
    write.__code__ = write.__code__.replace(co_name=f"program_{_loop.cache_info().currsize}")  # own cache
    return torch.compile(write, dynamic=True)


def write_side(spec: WriteSpec, g_t: Tensor, level: Tensor | None, z_chip: Tensor, keys: SideKeys,
               rows: Tensor | None, out: tuple[Tensor, ...], compiled: bool) -> None:
    """One write of every cell of one side, for the chips of ``keys`` (c,): targets ``g_t`` (1, S, O', K)
    with level indices ``level``, between-chip normals ``z_chip``, and ``rows`` (c, S, O', K) the physical
    row of each cell (None: identity), into ``out``: conductances at t0, fault codes and drift factors
    (c, S, O', K) each (factors: empty without drift). ``compiled``: use the compiled loop when the block has
    at least :data:`COMPILE_MIN` cells."""
    n = math.prod(g_t.shape[1:])
    idx_u, idx_z = rng._index(n, g_t.device), rng._index(-(-n // 2), g_t.device)
    args = (*out, g_t, level, z_chip, keys.fault, keys.write, keys.drift, idx_u, idx_z, rows)
    big = compiled and n * keys.fault.shape[0] >= COMPILE_MIN
    compiled_or_eager(_loop(spec, True) if big else None, _loop(spec, False), *args)

def between_chip_normals(v: VariabilityConfig, seed: int, layer: str, ids: Tensor, shape: tuple[int, ...],
                         reference: bool, row_tile: Tensor, tiles: tuple[int, int], cols: int) -> Tensor:
    """Between-chip normals of chips ``ids`` for a side of shape ``shape`` (S, O', K), broadcastable to
    (c, S, O', K): one per chip (all layers) or one per array (tile), by ``v.scope``. ``row_tile`` (K,)
    is the row tile of each row, ``tiles`` the (row, column) tile counts, ``cols`` the columns per array;
    ``reference``: the side is one reference column per tile."""
    if v.between_sigma == 0:
        return torch.zeros(1)
    if v.scope == "chip":
        return rng.draw("normal", rng.key(seed, "between-chip"), ids, (1,)).view(-1, 1, 1, 1)
    z = rng.draw("normal", rng.key(seed, layer, "between-array"), ids, tiles)
    col_tile = torch.arange(shape[1]) if reference else torch.arange(shape[1]) // cols
    return z[:, row_tile][:, :, col_tile].transpose(1, 2).unsqueeze(1)


def drift_compensation(compensate: bool, m: Mapped, at_t0: dict[str, Tensor], now: dict[str, Tensor]) -> Tensor:
    """Per-chip factor sum|I(t0)| / sum|I(t_read)| over the outputs of the identity reference input (each row
    driven alone: the sum of |G+ - G-| over the cells), as aihwkit's GlobalDriftCompensation reads it (ones
    when ``compensate`` is off), from per-side conductances (c, S, O', K) at t0 and now. Why not an all-ones
    input: its column sums cancel for mixed-sign weights, and where the two cells of a pair drift at
    different rates (PCM's state-dependent exponent) the ratio of two near-zero sums is off by several x."""
    if not compensate:
        return torch.ones(at_t0["pos"].shape[0])

    def ref_current(g: dict[str, Tensor]) -> Tensor:
        diff = g["pos"] - m.expand_neg(g["neg"])
        return diff.abs().sum(dim=(1, 2, 3))

    return ref_current(at_t0) / ref_current(now).clamp_min(1e-30)


def level_targets(m: Mapped, device: DeviceConfig, variability: VariabilityConfig
                  ) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Per side the mapped targets (1, S, O', K), clipped to the conductance range and rounded to the
    device's levels, with their level indices (computed once per programming, not per chunk)."""
    levels = get_model(device, variability).levels()
    return {side: round_to_levels(t.unsqueeze(0).cpu().clamp(device.g_min, device.g_max), levels)
            for side, t in (("pos", m.pos), ("neg", m.neg))}
