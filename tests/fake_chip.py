"""A second, minimal implementation of the Chip protocol, with none of the simulator's code.

An MLP of ``nn.Linear`` layers; every weight is one differential pair of cells in one array, mapped per layer
(G± = g_min + (g_max - g_min) relu(±w) / max|W|). Its physics is the chip config's, written out here in plain
torch: additive write noise of ``device.programming.sigma`` x g_max per write (clipped to [0, g_max]),
stuck-at faults fixed per chip, read noise of ``device.read_noise`` x G at every read, a ``circuit.dac_bits``
input DAC with a calibrated full scale, ideal wires and ADC. Recovery methods are run against it in
``test_conformance.py``: a method that reached past the :class:`~nvcim.chip.interface.Chip` protocol into the
simulator would fail here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nvcim.chip import Verified
from nvcim.config import ChipConfig, DeviceConfig
from nvcim.mapping import Differential, Mapping


def _ste_round(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


class _AdditiveCells:
    """The fake chip's datasheet: continuous conductances, a write spread of sigma x g_max everywhere."""

    between_chip_gain = False

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device

    def levels(self) -> Tensor | None:
        return None

    def round(self, target: Tensor) -> Tensor:
        return target

    def write_spread(self, target: Tensor) -> Tensor:
        return torch.full_like(target, self.device.programming.sigma * self.device.g_max)


class FakeChip:
    def __init__(self, net: nn.Sequential, config: ChipConfig, n_chips: int, seed: int = 0) -> None:
        assert config.mapping.scheme == "differential" and not config.mapping.weight_bits
        self.net, self._config, self._n, self.seed = net.eval(), config, n_chips, seed
        self.linears = {name: m for name, m in net.named_children() if isinstance(m, nn.Linear)}
        self.gen = torch.Generator().manual_seed(seed)
        d = config.device
        self.g_min, self.g_max = d.g_min, d.g_max
        self.stuck: dict[str, tuple[Tensor, Tensor]] = {}  # per side: 0 free, 1 stuck at g_min, 2 at g_max
        for name, lin in self.linears.items():
            o, k = lin.weight.shape
            self.stuck[name] = tuple(self._fault_map(o, k) for _ in range(2))  # type: ignore[assignment]
        self.perm = {name: torch.arange(lin.weight.shape[1]).expand(n_chips, -1).clone()
                     for name, lin in self.linears.items()}
        self.dac_fs = {name: 0.0 for name in self.linears}
        self.sram_regs: dict[str, tuple[Tensor, Tensor]] = {}
        self.program()

    def _fault_map(self, o: int, k: int) -> Tensor:
        u = torch.rand(self._n, 1, o, k, generator=self.gen)
        f = self._config.device.faults
        return torch.where(u < f.sa0, 1, torch.where(u < f.sa0 + f.sa1, 2, 0))

    # ---- the design ------------------------------------------------------------------------------
    @property
    def n_chips(self) -> int:
        return self._n

    @property
    def config(self) -> ChipConfig:
        return self._config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def layer_names(self) -> list[str]:
        return list(self.linears)

    def mapping(self, layer: str) -> Mapping:
        return Differential(self._config)  # it answers the scheme's questions; the fake maps by itself

    def device_model(self) -> _AdditiveCells:
        return _AdditiveCells(self._config.device)

    def row_tiles(self, layer: str) -> Tensor:
        return torch.arange(self.linears[layer].weight.shape[1]) // self._config.array.rows

    def ir_attenuation(self, layer: str, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(pos), torch.ones_like(neg)

    def _scale(self, layer: str) -> float:  # weight per siemens of pair difference
        return float(self.linears[layer].weight.detach().abs().max().clamp_min(1e-12)) / (self.g_max - self.g_min)

    def decode(self, layer: str, pos: Tensor, neg: Tensor) -> Tensor:
        return (pos - neg.to(pos)).sum(-3) * self._scale(layer)

    # ---- the reference ---------------------------------------------------------------------------
    def reference(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x)

    def reference_layer_io(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        io: dict[str, tuple[Tensor, Tensor]] = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: io.__setitem__(n, (i[0].detach(), o.detach())))
                 for n, m in self.linears.items()]
        try:
            self.reference(x)
        finally:
            for h in hooks:
                h.remove()
        return io

    def weight_matrix(self, layer: str) -> Tensor:
        return self.linears[layer].weight.detach()

    def bias(self, layer: str) -> Tensor | None:
        b = self.linears[layer].bias
        return None if b is None else b.detach()

    def unfold(self, layer: str, v: Tensor) -> Tensor:
        return v.reshape(-1, self.linears[layer].weight.shape[1])

    def reference_grads(self, x: Tensor, y: Tensor, loss=None) -> dict[str, Tensor]:
        weights = [m.weight for m in self.linears.values()]
        grads = torch.autograd.grad((loss or F.cross_entropy)(self.net(x), y), weights)
        return dict(zip(self.linears, grads))

    def parameters(self) -> list[Tensor]:
        return list(self.net.parameters())

    def buffers(self) -> list[Tensor]:
        return list(self.net.buffers())

    def reinitialize(self, seed: int) -> None:
        torch.manual_seed(seed)
        for lin in self.linears.values():
            lin.reset_parameters()

    def _dac(self, layer: str, h: Tensor, act_quant: dict | None = None) -> Tensor:
        if act_quant and layer in act_quant:
            step, bits, signed = act_quant[layer]
            lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            return torch.clamp(_ste_round(h / step), lo, hi) * step
        bits, fs = self._config.circuit.dac_bits, self.dac_fs[layer]
        if not bits or fs <= 0:
            return h
        levels = 2 ** (bits - 1) - 1
        return torch.clamp(_ste_round(h / fs * levels), -levels, levels) * fs / levels

    def train_forward(self, x: Tensor, step: int, censor: float = 0.0,
                      act_quant: dict[str, tuple[Tensor, int, bool]] | None = None, train: bool = True,
                      adc: bool = False) -> Tensor:
        gen = torch.Generator().manual_seed(10_000 + step)  # a fresh chip per step (no BatchNorm: train moot)
        sigma = self._config.device.programming.sigma * self.g_max
        f = self._config.device.faults
        h = x
        for name, mod in self.net.named_children():
            if name not in self.linears:
                h = mod(h)
                continue
            w = mod.weight
            o, k = w.shape
            s = self._scale(name)
            z = torch.randn(2, o, k, generator=gen)
            if censor:  # right-censored in the weight: the pos cell's draw above, the neg cell's below
                z = torch.stack([z[0].clamp(max=censor), z[1].clamp(min=-censor)])
            g = self._nominal(name) + sigma * z  # (2, O, K) pos, neg
            u = torch.rand(2, o, k, generator=gen)
            g = torch.where(u < f.sa0, self.g_min, torch.where(u < f.sa0 + f.sa1, self.g_max, g.clamp(0, self.g_max)))
            noisy = (g[0] - g[1]) * s
            h = F.linear(self._dac(name, h, act_quant), w + (noisy - w).detach(), mod.bias)
        return h

    # ---- the cells ---------------------------------------------------------------------------------
    def _nominal(self, layer: str) -> Tensor:
        w = self.linears[layer].weight.detach()
        span = (self.g_max - self.g_min) / w.abs().max().clamp_min(1e-12)
        return torch.stack([self.g_min + span * w.clamp_min(0), self.g_min + span * (-w).clamp_min(0)])

    def targets(self, layer: str) -> tuple[Tensor, Tensor]:
        t = self._nominal(layer)
        return t[0].unsqueeze(0), t[1].unsqueeze(0)

    def _logical(self, layer: str, g: Tensor) -> Tensor:  # physical-row state -> logical-row order
        idx = self.perm[layer].view(self._n, 1, 1, -1).expand_as(g)
        return g.gather(-1, idx)

    def read(self, layer: str) -> tuple[Tensor, Tensor]:
        rn = self._config.device.read_noise
        out = []
        for g in self.g[layer]:
            g = self._logical(layer, g)
            out.append(g * (1 + rn * torch.randn(g.shape, generator=self.gen)))
        return out[0], out[1]

    def _land(self, layer: str, side: int, mask_phys: Tensor, target_phys: Tensor) -> None:
        z = torch.randn(target_phys.shape, generator=self.gen)
        landed = (target_phys + self._config.device.programming.sigma * self.g_max * z).clamp(0, self.g_max)
        stuck = self.stuck[layer][side]
        landed = torch.where(stuck == 1, self.g_min, torch.where(stuck == 2, self.g_max, landed))
        self.g[layer][side] = torch.where(mask_phys, landed, self.g[layer][side])

    def program(self, calibration: Tensor | None = None, converters: str = "all") -> None:
        self.g: dict[str, list[Tensor]] = {}
        for name, lin in self.linears.items():
            o, k = lin.weight.shape
            self.g[name] = [torch.zeros(self._n, 1, o, k), torch.zeros(self._n, 1, o, k)]
            t = self.targets(name)
            for side in (0, 1):
                full = t[side].expand(self._n, 1, o, k)
                self.write(name, ("pos", "neg")[side], torch.ones_like(full, dtype=torch.bool), full)
        self.affine = {name: (torch.ones(self._n, lin.out_features), torch.zeros(self._n, lin.out_features))
                       for name, lin in self.linears.items()}
        if calibration is not None and converters == "all":  # this chip has no ADC: "adc" sets nothing
            for name, (inp, _) in self.reference_layer_io(calibration).items():
                self.dac_fs[name] = float(inp.abs().max())

    def write(self, layer: str, side: str, mask: Tensor, targets: Tensor) -> Tensor:
        s = ("pos", "neg").index(side)
        # logical row k lives on physical row perm[k]: scatter the logical request onto physical rows
        idx = self.perm[layer].view(self._n, 1, 1, -1).expand_as(mask)
        m = torch.zeros_like(mask).scatter(-1, idx, mask)
        t = torch.zeros_like(targets).scatter(-1, idx, targets.to(torch.float32))
        self._land(layer, s, m, t)
        return mask.flatten(1).sum(-1)

    def write_verify(self, layer: str, mask_pos: Tensor, mask_neg: Tensor, tol: float, max_pulses: int,
                     give_up: int = 0) -> Verified:
        tol_s = tol * (self.g_max - self.g_min)
        band = tol_s + 3 * self._config.device.read_noise * self.g_max
        pulses = torch.zeros(self._n, dtype=torch.long)
        pending = [mask_pos.clone(), mask_neg.clone()]
        stuck = [torch.zeros_like(p) for p in pending]
        run = [torch.zeros(p.shape, dtype=torch.long) for p in pending]  # signed count of reads at a rail
        targets = [t.expand_as(mask_pos) for t in self.targets(layer)]
        for attempt in range(max_pulses + 1):
            seen = self.read(layer)
            for s in (0, 1):
                pending[s] &= (seen[s] - targets[s]).abs() > tol_s
                if give_up:
                    hi = (seen[s] >= self.g_max - band) & (self.g_max - targets[s] > 2 * tol_s)
                    lo = (seen[s] <= self.g_min + band) & (targets[s] - self.g_min > 2 * tol_s)
                    rail = hi.long() - lo.long()
                    keep = pending[s] & (rail != 0) & (run[s].sign() == rail)
                    run[s] = torch.where(keep, run[s] + rail, torch.where(pending[s], rail, 0))
                    gone = pending[s] & (run[s].abs() >= give_up)
                    stuck[s] |= gone
                    pending[s] &= ~gone
                if attempt < max_pulses:
                    pulses += self.write(layer, ("pos", "neg")[s], pending[s], targets[s])
            if not any(bool(p.any()) for p in pending):
                break
        return Verified(pulses, pending[0] | stuck[0], pending[1] | stuck[1], stuck[0], stuck[1])

    def row_routing(self, layer: str) -> Tensor:
        return self.perm[layer].clone()

    def remap_rows(self, layer: str, perm: Tensor) -> Tensor:
        moved = (perm != self.perm[layer]).sum(-1)
        self.perm[layer] = perm.clone().long()
        return moved

    # ---- keeping a state ---------------------------------------------------------------------------
    def checkpoint(self) -> object:
        return copy.deepcopy({"g": self.g, "perm": self.perm, "affine": self.affine, "sram": self.sram_regs})

    def restore(self, state: object, chips: Tensor) -> Tensor:
        assert isinstance(state, dict)
        sel = chips.bool()
        changed = torch.zeros(self._n, dtype=torch.long)
        for name in self.linears:
            for s in (0, 1):
                old, now = state["g"][name][s], self.g[name][s]
                v = sel.view(-1, 1, 1, 1)
                changed += ((old != now) & v).flatten(1).sum(1)
                self.g[name][s] = torch.where(v, old, now)
            self.perm[name] = torch.where(sel.view(-1, 1), state["perm"][name], self.perm[name])
            self.affine[name] = tuple(torch.where(sel.view(-1, 1), a, b.detach())  # type: ignore[assignment]
                                      for a, b in zip(state["affine"][name], self.affine[name]))
            if name in self.sram_regs:
                m1, w1 = self.sram_regs[name]
                m0, w0 = state["sram"].get(name, (m1, torch.zeros_like(w1)))
                n = self._n
                self.sram_regs[name] = (torch.where(sel.view(-1, 1, 1), m0.expand(n, *m0.shape[-2:]),
                                                    m1.expand(n, *m1.shape[-2:])),
                                        torch.where(sel.view(-1, 1, 1), w0, w1.detach()))
        return changed

    # ---- running -----------------------------------------------------------------------------------
    def _run(self, x: Tensor, on_layer) -> Tensor:  # noqa: ANN001
        h = x.unsqueeze(0).expand(self._n, *x.shape)
        rn = self._config.device.read_noise
        for name, mod in self.net.named_children():
            if name not in self.linears:
                h = mod(h.flatten(0, 1)).unflatten(0, (self._n, -1))
                continue
            xin = self._dac(name, h)
            pos, neg = (self._logical(name, g) for g in self.g[name])
            pos = pos * (1 + rn * torch.randn(pos.shape, generator=self.gen))
            neg = neg * (1 + rn * torch.randn(neg.shape, generator=self.gen))
            w = self.decode(name, pos, neg)  # (N, O, K)
            if name in self.sram_regs:
                m, ws = self.sram_regs[name]
                w = w + m * ws
            y = torch.einsum("nbk,nok->nbo", xin, w)
            if mod.bias is not None:
                y = y + mod.bias.detach()
            gain, offset = self.affine[name]
            h = gain.unsqueeze(1) * y + offset.unsqueeze(1)
            on_layer(name, h, xin, h)
        return h

    def infer(self, x: Tensor, capture: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        got: dict[str, Tensor] = {}
        y = self._run(x, lambda name, out, xin, h: got.__setitem__(name, out) if name in capture else None)
        return y, got

    def layer_inputs(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        got: dict[str, Tensor] = {}
        with torch.no_grad():
            self._run(x, lambda name, out, xin, h: got.__setitem__(name, xin) if name in layers else None)
        return got

    # ---- the digital registers ---------------------------------------------------------------------
    def set_output_affine(self, layer: str, gain: Tensor, offset: Tensor) -> None:
        self.affine[layer] = (gain, offset)

    def output_affine(self, layer: str) -> tuple[Tensor, Tensor]:
        return tuple(t.detach().clone() for t in self.affine[layer])  # type: ignore[return-value]

    def set_sram(self, layer: str, mask: Tensor, weights: Tensor) -> None:
        self.sram_regs[layer] = (mask, weights)

    def sram(self, layer: str) -> tuple[Tensor, Tensor] | None:
        return self.sram_regs.get(layer)

    def input_format(self, layer: str) -> tuple[int, bool, float]:
        return self._config.circuit.dac_bits, True, self.dac_fs[layer]

    def set_input_range(self, layer: str, full_scale: float) -> None:
        self.dac_fs[layer] = float(full_scale)
