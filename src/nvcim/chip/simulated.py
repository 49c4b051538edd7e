"""The simulator behind the :class:`~nvcim.chip.interface.Chip` protocol: an
:class:`~nvcim.chip.model.AnalogModel` driven as a test bench drives silicon."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..circuits import get_read_noise
from ..config import ChipConfig
from ..devices import ProgrammingModel, get_model
from ..errors import NvcimError
from ..mapping import Mapping
from . import rng
from .context import DigitalPass, TrainPass
from .interface import Verified
from .layers import AnalogLayer
from .model import AnalogModel

TRAIN_CHIP_BASE = 1 << 30  # ids of training chips; evaluated chips are 0..N-1


class SimulatedChip:
    """The simulator behind the :class:`Chip` interface."""

    def __init__(self, model: AnalogModel) -> None:
        self.model = model
        self._layers = {layer.layer_name: layer for layer in model.analog_layers()}
        self._reads = 0

    @property
    def n_chips(self) -> int:
        return self.model.chips

    @property
    def config(self) -> ChipConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def layer_names(self) -> list[str]:
        return list(self._layers)

    def layer(self, name: str) -> AnalogLayer:
        """The simulated layer (for the simulator's own code and tests, not for methods)."""
        return self._layers[name]

    def targets(self, layer: str) -> tuple[Tensor, Tensor]:
        pos, neg = self._layers[layer].crossbar.nominal()
        return pos[0], neg[0]

    def _read_noise(self, layer: AnalogLayer, g: Tensor, tag: str, g0: Tensor | None = None,
                    t: float | None = None) -> Tensor:
        d = layer.config.device
        if not d.read_noise:
            return g
        self._reads += 1
        xb = layer.crossbar
        z = rng.draw("normal", rng.key(xb.seed, layer.layer_name, tag, self._reads), xb.chip_ids.cpu(),
                     tuple(g.shape[1:]))
        return get_read_noise(d.read_noise_model).sample(g, z.to(g), d, g0, t)

    def program(self, calibration: Tensor | None = None, converters: str = "all") -> None:
        self.model.reprogram(calibration, converters)

    def decode(self, layer: str, pos: Tensor, neg: Tensor) -> Tensor:
        lay = self._layers[layer]
        neg = neg.to(pos)
        return lay.crossbar.decode(pos - lay.mapping.expand_neg(neg, lay.out_features))

    def mapping(self, layer: str) -> Mapping:
        return self._layers[layer].mapping

    def device_model(self) -> ProgrammingModel:
        return get_model(self.config.device, self.config.variability)

    def ir_attenuation(self, layer: str, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        xb = self._layers[layer].crossbar
        a_neg = torch.ones_like(neg) if xb.mapping.reference else xb.ir_attenuation(neg)  # none on references
        return xb.ir_attenuation(pos), a_neg

    def read(self, layer: str) -> tuple[Tensor, Tensor]:
        lay = self._layers[layer]
        (pos, neg), (pos0, neg0) = lay.crossbar.effective(), lay.crossbar.programmed()
        return self._read_noise(lay, pos, "read-pos", pos0), self._read_noise(lay, neg, "read-neg", neg0)

    def write_verify(self, layer: str, mask_pos: Tensor, mask_neg: Tensor, tol: float, max_pulses: int,
                     give_up: int = 0) -> Verified:
        lay = self._layers[layer]
        xb = lay.crossbar
        if xb.on_demand:
            raise xb.not_stored("write-verify")
        d = lay.config.device
        span = d.g_max - d.g_min
        tol_s = tol * span
        band = tol_s + 3 * d.read_noise * d.g_max  # how close to a rail a stuck cell reads (read noise included)
        pulses = torch.zeros(self.n_chips, dtype=torch.long)
        targets = dict(zip(("pos", "neg"), self.targets(layer)))
        dev = xb.g_pos.device
        pending = {"pos": mask_pos.to(dev, copy=True), "neg": mask_neg.to(dev, copy=True)}
        stuck = {side: torch.zeros_like(pending[side]) for side in pending}
        at_rail = {side: torch.zeros(pending[side].shape, dtype=torch.int8, device=dev) for side in pending}
        for attempt in range(max_pulses + 1):
            for side in ("pos", "neg"):
                if not bool(pending[side].any()):
                    continue
                g = xb.programmed()[0 if side == "pos" else 1]
                t = targets[side].unsqueeze(0).to(dev)
                seen = self._read_noise(lay, g, f"verify-{side}", t=d.drift.t0)  # verify at programming (t0)
                pending[side] &= (seen - t).abs() > tol_s
                if give_up:
                    # +1 / -1: the read is at the upper / lower rail, and the target is well away from it
                    rail = torch.where((seen >= d.g_max - band) & (d.g_max - t > 2 * tol_s), 1,
                                       torch.where((seen <= d.g_min + band) & (t - d.g_min > 2 * tol_s), -1, 0))
                    same = pending[side] & (rail != 0)
                    prev = at_rail[side]
                    at_rail[side] = torch.where(same & (prev.sign() == rail), prev + rail, torch.where(same, rail, 0)
                                                ).to(torch.int8)
                    gone = pending[side] & (at_rail[side].abs() >= give_up)
                    stuck[side] |= gone
                    pending[side] &= ~gone
                if attempt < max_pulses and bool(pending[side].any()):
                    pulses += xb.rewrite(side, pending[side]).cpu()
            if not any(bool(p.any()) for p in pending.values()):
                break
        return Verified(pulses, (pending["pos"] | stuck["pos"]).cpu(), (pending["neg"] | stuck["neg"]).cpu(),
                        stuck["pos"].cpu(), stuck["neg"].cpu())

    def row_tiles(self, layer: str) -> Tensor:
        return self._layers[layer].row_tile_index()

    def row_routing(self, layer: str) -> Tensor:
        return self._layers[layer].crossbar.row_perm.cpu().clone()

    def remap_rows(self, layer: str, perm: Tensor) -> Tensor:
        return self._layers[layer].crossbar.remap_rows(perm)

    def write(self, layer: str, side: str, mask: Tensor, targets: Tensor) -> Tensor:
        if side not in ("pos", "neg"):
            raise ValueError(f"side must be 'pos' or 'neg', got {side!r}")
        xb = self._layers[layer].crossbar  # methods may hand CPU tensors to a chip simulated on a GPU
        g = xb.programmed()[0]
        return xb.rewrite(side, mask.to(g.device), targets.to(g)).cpu()

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

    # ---- keeping a state ---------------------------------------------------------------------------
    def checkpoint(self) -> object:
        return {name: lay.crossbar.checkpoint() for name, lay in self._layers.items()}

    def restore(self, state: object, chips: Tensor) -> Tensor:
        if not isinstance(state, dict) or set(state) != set(self._layers):
            raise NvcimError("restore: not a checkpoint of this chip")
        chips = chips.to(torch.bool).cpu()
        if tuple(chips.shape) != (self.n_chips,):
            raise NvcimError(f"restore: chips must be a boolean mask of shape ({self.n_chips},)")
        rewritten = torch.zeros(self.n_chips, dtype=torch.long)
        if not bool(chips.any()):
            return rewritten
        for name, saved in state.items():
            rewritten += self._layers[name].crossbar.restore(saved, chips)
        return rewritten

    # ---- the reference ---------------------------------------------------------------------------
    def reference(self, x: Tensor) -> Tensor:
        return self.model.digital(x)

    def reference_layer_io(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        return self.model.digital_layer_io(x)

    def weight_matrix(self, layer: str) -> Tensor:
        return self._layers[layer].weight_matrix().detach()

    def bias(self, layer: str) -> Tensor | None:
        b = self._layers[layer].bias
        return None if b is None else b.detach()

    def unfold(self, layer: str, v: Tensor) -> Tensor:
        return self._layers[layer].unfold_input(v.to(self.device))

    def reference_grads(self, x: Tensor, y: Tensor, loss: Callable[[Tensor, Tensor], Tensor] | None = None
                        ) -> dict[str, Tensor]:
        task_loss = loss or F.cross_entropy
        layers = list(self._layers.values())
        weights = [lay.weight for lay in layers]
        with torch.enable_grad(), self.model.running(DigitalPass()):
            value = task_loss(self.model.net(self.model.check_input(x)), y.to(self.device))
            grads = torch.autograd.grad(value, weights, allow_unused=True)
        return {lay.layer_name: lay.as_matrix(torch.zeros_like(lay.weight) if g is None else g.detach())
                for lay, g in zip(layers, grads)}

    def parameters(self) -> list[Tensor]:
        return list(self.model.net.parameters())

    def buffers(self) -> list[Tensor]:  # the digital modules' (BatchNorm); an analog layer's are its cells
        chip_state = {id(m) for lay in self._layers.values() for m in lay.modules()}
        return [b for m in self.model.net.modules() if id(m) not in chip_state for b in m.buffers(recurse=False)]

    @torch.no_grad()
    def reinitialize(self, seed: int) -> None:
        # each module as its constructor draws it: PyTorch's own reset_parameters (BatchNorm: ones, zeros and
        # fresh running statistics); a converted layer has none, so its weight gets nn.Linear's / nn.Conv's
        # default (Kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in)). A custom module's own
        # parameters without reset_parameters (a learned position embedding) keep their values.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for m in self.model.net.modules():
                if isinstance(m, AnalogLayer):
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                    if m.bias is not None:
                        bound = 1 / math.sqrt(m.weight[0].numel())
                        nn.init.uniform_(m.bias, -bound, bound)
                elif callable(reset := getattr(m, "reset_parameters", None)):
                    reset()

    def train_forward(self, x: Tensor, step: int, censor: float = 0.0,
                      act_quant: dict[str, tuple[Tensor, int, bool]] | None = None, train: bool = True,
                      adc: bool = False) -> Tensor:
        unknown = set(act_quant or {}) - set(self._layers)
        if unknown:
            raise NvcimError(f"train_forward: act_quant names layers that are not analog: {sorted(unknown)}")
        ctx = TrainPass(batch=x.shape[0], train_chip=TRAIN_CHIP_BASE + step, censor=censor,
                        act_quant=dict(act_quant or {}), adc=adc)
        self.model.net.train(train)
        try:
            with self.model.running(ctx):
                return self.model.net(self.model.check_input(x))
        finally:
            self.model.net.eval()

    # ---- the digital registers ---------------------------------------------------------------------
    def set_output_affine(self, layer: str, gain: Tensor, offset: Tensor) -> None:
        self._layers[layer].crossbar.set_output_affine(gain, offset)

    def output_affine(self, layer: str) -> tuple[Tensor, Tensor]:
        xb = self._layers[layer].crossbar
        return xb.tune_gain.detach().clone(), xb.tune_offset.detach().clone()

    def set_sram(self, layer: str, mask: Tensor, weights: Tensor) -> None:
        self._layers[layer].crossbar.set_sram(mask, weights)

    def sram(self, layer: str) -> tuple[Tensor, Tensor] | None:
        return self._layers[layer].crossbar.sram()

    def input_format(self, layer: str) -> tuple[int, bool, float]:
        lay = self._layers[layer]
        return int(self.config.circuit.dac_bits), bool(lay.converters.dac_signed), float(lay.converters.dac_fs)

    def set_input_range(self, layer: str, full_scale: float) -> None:
        if not full_scale > 0:
            raise ValueError(f"{layer}: the DAC full scale must be > 0, got {full_scale}")
        self._layers[layer].converters.set_input_range(full_scale)


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
