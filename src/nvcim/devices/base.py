"""The device-model interface: how a target conductance becomes a programmed one.

A programming model gets the target conductances (already rounded to a level), the level index of each
cell, and standard-normal draws for the within-chip (``z_cell``) and between-chip (``z_chip``) components;
it returns the programmed conductances. Randomness is drawn centrally (see :mod:`nvcim.chip.rng`) so that a
model is a pure function and chips stay reproducible. Adding a device model is one file: a typed config
class with the model's own fields (a frozen dataclass subclassing :class:`~nvcim.config.ProgrammingConfig`,
whose ``model`` constant is its name in files), and a :class:`ProgrammingModel` subclass that names it as
``config_type``, decorated with :func:`register`.

``sample`` runs inside the compiled programming loop of large layers (:mod:`nvcim.chip.programming`) and
eagerly for small ones. Write it from plain arithmetic, with :mod:`nvcim.arith` for exp, log and sqrt, so
that both give the same bits: torch's own transcendental functions differ by an ulp between the two.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import torch
from torch import Tensor

from ..config.schema import DeviceConfig, ProgrammingConfig, VariabilityConfig
from ..registry import Registry


class ProgrammingModel:
    """Base class of programming-variation models. Subclasses set ``config_type`` and implement ``sample``;
    ``config`` is the device's programming section, an instance of ``config_type``."""

    name: ClassVar[str] = ""  # set on registration, from config_type
    config_type: ClassVar[type[ProgrammingConfig]]  # no default: a model without one has no name
    # whether the between-chip term multiplies every cell it covers (a write gain that a re-write lands with
    # again) rather than adding an offset (which a differential pair cancels)
    between_chip_gain: ClassVar[bool] = False

    def __init__(self, device: DeviceConfig, variability: VariabilityConfig) -> None:
        self.device, self.variability = device, variability
        self.config = device.programming

    def round(self, target: Tensor) -> Tensor:
        """``target`` (S) rounded to the nearest programmable level (as it is for a continuous device)."""
        return round_to_levels(target, self.levels())[0]

    def levels(self) -> Tensor | None:
        """Programmable level conductances (S), ascending; None for a continuous device."""
        d = self.device
        if d.levels:
            return torch.tensor(d.levels, dtype=torch.float32)
        if d.bits_per_cell == 0:
            return None
        return torch.linspace(d.g_min, d.g_max, 2**d.bits_per_cell, dtype=torch.float32)

    def sample(self, target: Tensor, level: Tensor | None, z_cell: Tensor, z_chip: Tensor) -> Tensor:
        """Programmed conductances (S) for ``target`` (S); ``z_*`` are standard normals of the same shape."""
        raise NotImplementedError

    def write_spread(self, target: Tensor) -> Tensor:
        """Datasheet std (S) of one write to ``target`` (S), within-chip part only (what a re-write re-rolls).

        Estimated from the model itself (256 draws per level, or on a 65-point grid for a continuous
        device, interpolated), so every device model has it without extra code.
        """
        levels = self.levels()
        d = self.device
        grid = levels if levels is not None else torch.linspace(d.g_min, d.g_max, 65)
        idx = torch.arange(len(grid)) if levels is not None else None
        z = torch.randn((256, len(grid)), generator=torch.Generator().manual_seed(0))
        sd = self.sample(grid.expand_as(z), None if idx is None else idx.expand_as(z), z, torch.zeros(1)).std(0)
        if levels is not None:
            return sd[round_to_levels(target, levels)[1]]
        pos = ((target - d.g_min) / (d.g_max - d.g_min) * 64).clamp(0, 64)
        lo = pos.floor().long().clamp(max=63)
        frac = pos - lo
        return sd[lo] * (1 - frac) + sd[lo + 1] * frac


PROGRAMMING_MODELS: Registry[ProgrammingModel] = Registry("device.programming.model")
register = PROGRAMMING_MODELS.register  # class decorator: the model for its config_type


def get_model(device: DeviceConfig, variability: VariabilityConfig) -> ProgrammingModel:
    """The programming model for the type of ``device.programming``."""
    return PROGRAMMING_MODELS.for_config(device.programming)(device, variability)


@functools.lru_cache(maxsize=64)
def _uniform(levels: tuple[float, ...]) -> bool:
    """Whether ``levels`` (ascending) are evenly spaced to 0.1 %: then a level index guessed by arithmetic
    is within one of the nearest (training rounds weights at every step: checked once per level set)."""
    if len(levels) < 2 or levels[-1] <= levels[0]:
        return False
    step = (levels[-1] - levels[0]) / (len(levels) - 1)
    return all(abs(b - a - step) <= 1e-3 * step for a, b in zip(levels, levels[1:]))


def round_to_levels(target: Tensor, levels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Round conductances to the nearest level; returns (rounded, level index) or (target, None)."""
    if levels is None:
        return target, None
    uniform = _uniform(tuple(levels.tolist()))  # read before the move: no device sync
    levels = levels.to(target.device)
    mids = (levels[1:] + levels[:-1]) / 2
    n = len(mids)
    step = (levels[-1] - levels[0]) / max(1, n)
    if not uniform or target.dtype != levels.dtype or not bool(torch.isfinite(target).all()):
        idx = torch.bucketize(target, mids)
        return levels[idx], idx
    # Uniform levels (every preset but measured tables): a guess from arithmetic is within one level of the
    # nearest, and one comparison each way against the midpoints makes it exactly bucketize's index (the
    # number of midpoints below the target); 6x faster than bucketize's binary search on a CPU, and training
    # rounds every layer's weights at every step
    guess = ((target - levels[0]) * (1.0 / step)).round_().clamp_(0, n).long().flatten()
    ext = torch.cat([mids.new_full((1,), -math.inf), mids, mids.new_full((1,), math.inf)])
    flat = target.flatten()
    idx = guess + (flat > ext.index_select(0, guess + 1)).long() - (flat <= ext.index_select(0, guess)).long()
    idx = idx.view(target.shape)
    return levels.index_select(0, idx.flatten()).view(target.shape), idx
