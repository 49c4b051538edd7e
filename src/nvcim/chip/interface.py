"""The chip interface that recovery methods use, and nothing else.

A :class:`Chip` is N chip instances that can be programmed, read back, write-verified and run, the way a
test bench drives real silicon: a method sees read-back conductances (with read noise), the outputs of
layers it could measure, and the digital periphery registers it may set. It never sees the simulator's
hidden state (true conductances, fault maps) — a method that needs more must say so in its docs.
:class:`SimulatedChip` implements it for an :class:`~nvcim.chip.model.AnalogModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import NvcimError
from . import rng
from .layers import AnalogLayer
from .model import AnalogModel


@runtime_checkable
class Chip(Protocol):
    """N chips behind one interface. Conductances are in siemens, shapes ``(N, S, out, K)``."""

    @property
    def n_chips(self) -> int: ...

    def layer_names(self) -> list[str]: ...

    def targets(self, layer: str) -> tuple[Tensor, Tensor]:
        """The conductances the mapper asked for, ``(S, out, K)`` each (known to the user, not noisy)."""
        ...

    def read(self, layer: str) -> tuple[Tensor, Tensor]:
        """Read every cell back once, with read noise: ``(N, S, out, K)`` for each side."""
        ...

    def program(self, calibration: Tensor | None = None) -> None:
        """Program every cell of every chip to the mapping of the current ideal weights (one noisy write
        each, the same devices), clear the digital registers, re-calibrate converters on ``calibration``."""
        ...

    def decode(self, layer: str, pos: Tensor, neg: Tensor) -> Tensor:
        """Weights ``(N, out, K)`` that conductances represent under the layer's mapping (the periphery's
        scale and shift-and-add, which the designer knows)."""
        ...

    def scheme(self, layer: str) -> str:
        """'differential' or 'offset'."""
        ...

    def ir_attenuation(self, layer: str, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """The design's IR-drop model: the factor in (0, 1] by which each cell's contribution to the column
        current shrinks when the array holds conductances ``pos``/``neg`` (any leading dims, then
        ``(S, out, K)``); ones when the wires are ideal. It uses the array geometry and wire resistance,
        which a designer knows, not the cells' hidden state."""
        ...

    def row_tiles(self, layer: str) -> Tensor:
        """The crossbar tile of every logical row ``(K,)`` (the floorplan, which a designer knows)."""
        ...

    def row_routing(self, layer: str) -> Tensor:
        """The physical row of every logical row, per chip ``(N, K)`` (identity until remapped)."""
        ...

    def remap_rows(self, layer: str, perm: Tensor) -> Tensor:
        """Route logical row k of chip n to physical row ``perm[n, k]`` of the same tile (the input
        driver's routing). Cells keep their physical state, so moved rows must be programmed afterwards.
        Returns the number of moved rows per chip ``(N,)``."""
        ...

    def write_verify(self, layer: str, mask_pos: Tensor, mask_neg: Tensor, tol: float, max_pulses: int
                     ) -> Tensor:
        """Program -> verify-read -> re-pulse the masked cells until within ``tol`` (fraction of
        g_max - g_min) or ``max_pulses``; returns the extra programming pulses per chip ``(N,)``."""
        ...

    def write(self, layer: str, side: str, mask: Tensor, targets: Tensor) -> Tensor:
        """One (noisy) programming pulse to each masked cell of ``side`` ('pos' or 'neg') towards
        ``targets`` (N, S, out, K) in siemens; returns pulses per chip ``(N,)``."""
        ...

    def infer(self, x: Tensor, capture: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Outputs ``(N, B, ...)`` and the outputs of the ``capture`` layers, each ``(N, B, ...)``."""
        ...

    def layer_inputs(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """The digital inputs that ``layers`` receive on each chip (what their DACs are fed, a register
        a real chip can read out) when the chip runs ``x``: each ``(N, B, ...)``."""
        ...

    def set_output_affine(self, layer: str, gain: Tensor, offset: Tensor) -> None:
        """Set the digital per-chip, per-output-column registers y -> gain y + offset, ``(N, out)``."""
        ...

    def output_affine(self, layer: str) -> tuple[Tensor, Tensor]: ...


class SimulatedChip:
    """The simulator behind the :class:`Chip` interface."""

    def __init__(self, model: AnalogModel) -> None:
        self.model = model
        self._layers = {layer.layer_name: layer for layer in model.analog_layers()}
        self._reads = 0

    @property
    def n_chips(self) -> int:
        return self.model.chips

    def layer_names(self) -> list[str]:
        return list(self._layers)

    def layer(self, name: str) -> AnalogLayer:
        """The simulated layer (for the simulator's own code and tests, not for methods)."""
        return self._layers[name]

    def targets(self, layer: str) -> tuple[Tensor, Tensor]:
        pos, neg = self._layers[layer].nominal()
        return pos[0], neg[0]

    def _read_noise(self, layer: AnalogLayer, g: Tensor, tag: str) -> Tensor:
        sr = layer.config.device.read_noise
        if not sr:
            return g
        self._reads += 1
        z = rng.draw("normal", rng.key(layer.seed, layer.layer_name, tag, self._reads), layer.chip_ids.cpu(),
                     tuple(g.shape[1:]))
        return g + sr * g * z.to(g)

    def program(self, calibration: Tensor | None = None) -> None:
        self.model.reprogram(calibration)

    def decode(self, layer: str, pos: Tensor, neg: Tensor) -> Tensor:
        lay = self._layers[layer]
        neg = neg.to(pos)
        return lay.decode(pos - (lay._expand_ref(neg) if lay.config.mapping.scheme == "offset" else neg))

    def scheme(self, layer: str) -> str:
        return self._layers[layer].config.mapping.scheme

    def ir_attenuation(self, layer: str, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        lay = self._layers[layer]
        r = lay.config.array.wire_resistance
        if not r:
            return torch.ones_like(pos), torch.ones_like(neg)
        a_neg = lay._ir(neg, r) if lay.config.mapping.scheme == "differential" else torch.ones_like(neg)
        return lay._ir(pos, r), a_neg

    def read(self, layer: str) -> tuple[Tensor, Tensor]:
        lay = self._layers[layer]
        pos, neg = lay.effective()
        return self._read_noise(lay, pos, "read-pos"), self._read_noise(lay, neg, "read-neg")

    def write_verify(self, layer: str, mask_pos: Tensor, mask_neg: Tensor, tol: float, max_pulses: int
                     ) -> Tensor:
        lay = self._layers[layer]
        d = lay.config.device
        tol_s = tol * (d.g_max - d.g_min)
        pulses = torch.zeros(self.n_chips, dtype=torch.long)
        targets = dict(zip(("pos", "neg"), self.targets(layer)))
        pending = {"pos": mask_pos.to(lay.g_pos.device, copy=True), "neg": mask_neg.to(lay.g_neg.device, copy=True)}
        for attempt in range(max_pulses + 1):
            for side in ("pos", "neg"):
                if not bool(pending[side].any()):
                    continue
                g = lay.g_pos if side == "pos" else lay.g_neg
                seen = self._read_noise(lay, g, f"verify-{side}")  # verify at programming time (t0)
                ok = (seen - targets[side].unsqueeze(0)).abs() <= tol_s
                pending[side] &= ~ok
                if attempt < max_pulses and bool(pending[side].any()):
                    pulses += lay.rewrite(side, pending[side]).cpu()
            if not any(bool(p.any()) for p in pending.values()):
                break
        return pulses

    def row_tiles(self, layer: str) -> Tensor:
        return self._layers[layer].row_tile_index()

    def row_routing(self, layer: str) -> Tensor:
        return self._layers[layer].row_perm.cpu().clone()

    def remap_rows(self, layer: str, perm: Tensor) -> Tensor:
        return self._layers[layer].remap_rows(perm)

    def write(self, layer: str, side: str, mask: Tensor, targets: Tensor) -> Tensor:
        if side not in ("pos", "neg"):
            raise ValueError(f"side must be 'pos' or 'neg', got {side!r}")
        lay = self._layers[layer]  # methods may hand CPU tensors to a chip simulated on a GPU
        return lay.rewrite(side, mask.to(lay.g_pos.device), targets.to(lay.g_pos)).cpu()

    def infer(self, x: Tensor, capture: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        outs: dict[str, list[Tensor]] = {name: [] for name in capture}
        plan = self.model.plan(x)  # before hooking: planning may probe the model once
        hooks = []
        for name in capture:
            lay = self._layers[name]

            def hook(mod: torch.nn.Module, inp: object, out: Tensor, name: str = name) -> None:
                outs[name].append(out)
            hooks.append(lay.register_forward_hook(hook))
        try:
            y = self.model(x, image_ids=torch.arange(x.shape[0]), read_key=rng.key(self.model.seed, "infer",
                                                                                   self._reads))
            self._reads += 1
        finally:
            for h in hooks:
                h.remove()
        got = {}
        for name, parts in outs.items():
            # each part is (b * c, ...) for one chip block and image sub-batch, image-major
            got[name] = _assemble(parts, x.shape[0], self.n_chips, plan)
        return y, got

    def layer_inputs(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        parts: dict[str, list[Tensor]] = {name: [] for name in layers}
        plan = self.model.plan(x)  # before hooking: planning may probe the model once
        hooks = []
        for name in layers:
            def pre(mod: torch.nn.Module, inp: tuple[Tensor, ...], name: str = name) -> None:
                parts[name].append(inp[0].detach())
            hooks.append(self._layers[name].register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                self.model(x, image_ids=torch.arange(x.shape[0]), read_key=rng.key(self.model.seed, "infer",
                                                                                   self._reads))
            self._reads += 1
        finally:
            for h in hooks:
                h.remove()
        return {name: _assemble(p, x.shape[0], self.n_chips, plan) for name, p in parts.items()}

    def set_output_affine(self, layer: str, gain: Tensor, offset: Tensor) -> None:
        lay = self._layers[layer]
        shape = (self.n_chips, lay.out_features)
        if tuple(gain.shape) != shape or tuple(offset.shape) != shape:
            raise ValueError(f"{layer}: gain and offset must have shape {shape}")
        lay.tune_gain = gain.to(lay.tune_gain).clone()
        lay.tune_offset = offset.to(lay.tune_offset).clone()

    def output_affine(self, layer: str) -> tuple[Tensor, Tensor]:
        lay = self._layers[layer]
        return lay.tune_gain.clone(), lay.tune_offset.clone()


def _assemble(parts: list[Tensor], b: int, n_chips: int, plan: tuple[int, int]) -> Tensor:
    """Stitch hooked layer outputs of every (chip block, image sub-batch) pass into ``(N, B, ...)``."""
    block, imgs = plan
    passes = -(-n_chips // block) * -(-b // imgs)
    if len(parts) != passes:
        raise NvcimError(f"a captured layer ran {len(parts)} times in {passes} chip passes: a layer read several "
                         "times per forward (a recurrent cell, a shared layer) has no single output to capture")
    blocks = []
    it = iter(parts)
    for c0 in range(0, n_chips, block):
        keep = min(block, n_chips - c0)
        subs = []
        for i0 in range(0, b, imgs):
            p = next(it)
            nb = min(imgs, b - i0)
            if p.shape[0] == nb and block > 1:  # a first layer's input, shared by the block's chips
                p = p.unsqueeze(1).expand(nb, block, *p.shape[1:]).reshape(nb * block, *p.shape[1:])
            subs.append(p.reshape(nb, block, *p.shape[1:]).transpose(0, 1)[:keep])
        blocks.append(torch.cat(subs, dim=1))
    return torch.cat(blocks, dim=0)
