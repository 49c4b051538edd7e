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
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config.schema import DeviceConfig, VariabilityConfig
from ..devices import ProgrammingModel, drift, fault_codes, get_model
from . import rng

COMPILE_MIN = 1 << 20  # cells per call from which the compiled loop repays its one-off (disk-cached) compile
_compile_failed = False


@dataclass(frozen=True)
class WriteSpec:
    """What a write specialises on (the compiled loop is built once per spec)."""

    device: DeviceConfig
    variability: VariabilityConfig
    censor: float = 0.0  # clip the cell and chip draws at this many sigma (0: no clipping)
    has_drift: bool = False


@dataclass
class SideKeys:
    """Chip keys (c,) of one side's draws: fault uniforms, write normals and drift normals."""

    fault: Tensor
    write: Tensor
    drift: Tensor | None


def cells_from_draws(spec: WriteSpec, model: ProgrammingModel, g_t: Tensor, level: Tensor | None, u: Tensor,
                     z_cell: Tensor, z_chip: Tensor, z_nu: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Conductances at t0 with faults applied, fault codes and drift factors (empty without drift) of cells
    with targets ``g_t`` (rounded to ``level``), from their draws: ``u`` uniforms and ``z_cell``/``z_nu``
    normals (c, S, O', K), ``z_chip`` the between-chip normals (broadcastable)."""
    d = spec.device
    codes = fault_codes(u, d)
    if spec.censor:
        z_cell, z_chip = z_cell.clamp(-spec.censor, spec.censor), z_chip.clamp(-spec.censor, spec.censor)
    # faults forced by selects on the uniforms, not on the int8 codes (what apply_faults does, several times
    # faster in the compiled loop)
    sa0, stuck = u < d.faults.sa0, u < d.faults.sa0 + d.faults.sa1
    g0 = torch.where(stuck, torch.where(sa0, d.g_min, d.g_max), model.sample(g_t, level, z_cell, z_chip))
    if z_nu is None:
        return g0, codes, torch.ones(0, device=g0.device)
    return g0, codes, torch.where(stuck, 1.0, drift(torch.ones_like(z_nu), z_nu, d))


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
def _loop(spec: WriteSpec, compiled: bool) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    model = get_model(spec.device, spec.variability)

    def write(*a: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        return _keyed(spec, model, *a)  # type: ignore[arg-type]

    if not compiled:
        return write
    write.__code__ = write.__code__.replace(co_name=f"program_{_loop.cache_info().currsize}")  # own cache
    return torch.compile(write, dynamic=True)


def write_side(spec: WriteSpec, g_t: Tensor, level: Tensor | None, z_chip: Tensor, keys: SideKeys,
               rows: Tensor | None, compiled: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One write of every cell of one side, for the chips of ``keys`` (c,): targets ``g_t`` (1, S, O', K)
    with level indices ``level``, between-chip normals ``z_chip``, and ``rows`` (c, S, O', K) the physical
    row of each cell (None: identity). Returns (conductances at t0, fault codes, drift factors).
    ``compiled``: use the compiled loop when the block has at least :data:`COMPILE_MIN` cells."""
    global _compile_failed
    n = math.prod(g_t.shape[1:])
    idx_u, idx_z = rng._index(n, g_t.device), rng._index(-(-n // 2), g_t.device)
    args = (g_t, level, z_chip, keys.fault, keys.write, keys.drift, idx_u, idx_z, rows)
    if compiled and not _compile_failed and n * keys.fault.shape[0] >= COMPILE_MIN:
        try:
            return _loop(spec, True)(*args)
        except Exception as e:  # no C++ compiler, unsupported backend: stay correct, just slower
            _compile_failed = True
            warnings.warn(f"torch.compile failed ({type(e).__name__}); programming eagerly", stacklevel=2)
    return _loop(spec, False)(*args)
