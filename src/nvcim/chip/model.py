"""``convert``: swap a model's Linear/Conv2d for analog layers holding N chips, and run them in one pass.

The returned :class:`AnalogModel` maps an input batch ``(B, ...)`` to outputs ``(N, B, ...)``: the chip
dimension leads. Chips are processed in chunks sized to a memory budget, and images in sub-batches when
even one chip would not fit; thanks to counter-based randomness (:mod:`.rng`) the result does not depend
on either.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ChipConfig, load_config, preset
from ..config.fields import check, spec
from ..errors import ConfigError, ConversionError, NvcimError, ShapeError
from . import rng
from .heap import retain_heap
from .layers import AnalogConv2d, AnalogLayer, AnalogLinear, RunContext
from .tail import attach_tails

FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class Runtime:
    """How simulation runs (not what the chip is)."""

    memory_mb: float = spec(1024.0, "memory budget for the activations of one chip chunk", unit="MiB",
                            lo=1.0)
    chip_block: int = spec(10, "chips computed together in one grouped pass; the last block is padded, so "
                           "results are bitwise identical whatever the chip count or memory budget (10 divides "
                           "the usual 100 or 1000 chips: no padded chips computed)",
                           unit="chips", lo=1, hi=4096)
    compile: str = spec("auto", "fuse the analog epilogue with torch.compile: on, off, or auto (large "
                        "evaluations with a C++ compiler or a GPU)", choices=("auto", "on", "off"))
    retain_heap: bool = spec(True, "CPU runs on Linux: fix glibc's malloc thresholds so that freed "
                             "activations stay in the heap rather than being unmapped and faulted in again "
                             "every sub-batch (up to 2x faster; the process keeps its peak heap)")
    variance: str = spec("auto", "number format of the read-noise variance products (sum of x^2 G^2 per "
                         "output): float32 (as the values), bfloat16 (inputs and conductances rounded to 8 "
                         "significant bits, accumulated in float32: each output's noise std within 0.6 % of "
                         "its float32 value; 1.3-2x faster convolutions), or auto: bfloat16 for float32 "
                         "runs on CPUs with native bfloat16 instructions (AVX512-BF16, AMX), else float32",
                         choices=("auto", "float32", "bfloat16"))

    def __post_init__(self) -> None:
        check(self)


def resolve_config(config: ChipConfig | str | Path) -> ChipConfig:
    """A ChipConfig from a config, a preset name or a config file path."""
    if isinstance(config, ChipConfig):
        return config
    p = Path(str(config))
    if p.suffix.lower() in (".toml", ".json", ".yaml", ".yml") or p.is_file():
        return load_config(p)
    return preset(str(config))


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (read from /proc/cpuinfo; False elsewhere).
    Without them oneDNN emulates bfloat16, which is slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def variance_dtype(runtime: Runtime, dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """The dtype of the read-noise variance products for a run in ``dtype`` on ``device`` (None: ``dtype``)."""
    if dtype != torch.float32 or runtime.variance == "float32":
        return None
    if runtime.variance == "bfloat16" or (device.type == "cpu" and native_bf16()):
        return torch.bfloat16
    return None


def can_compile(device: torch.device) -> bool:
    """torch.compile needs a C++ compiler on CPU (Triton on GPU ships with torch)."""
    return device.type == "cuda" or any(shutil.which(c) for c in ("c++", "g++", "clang++"))


class AnalogModel(nn.Module):
    """A model whose Linear/Conv2d layers run on ``chips`` simulated chips. Output: ``(chips, B, ...)``."""

    def __init__(self, net: nn.Module, config: ChipConfig, chips: int, seed: int, runtime: Runtime) -> None:
        super().__init__()
        self.net, self.config, self.chips, self.seed, self.runtime = net, config, chips, seed, runtime
        self.compiled = runtime.compile == "on"
        self._reads = 0
        self._bytes_per_chip_image: dict[tuple[int, ...], float] = {}

    # ---- structure ------------------------------------------------------------------------------
    def analog_layers(self) -> list[AnalogLayer]:
        """The converted layers, in module order."""
        return [m for m in self.net.modules() if isinstance(m, AnalogLayer)]

    def _set(self, ctx: RunContext | None) -> None:
        for layer in self.analog_layers():
            layer.ctx = ctx

    @property
    def device(self) -> torch.device:
        return next(iter(self.analog_layers())).weight.device

    # ---- running --------------------------------------------------------------------------------
    def _check(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            raise ShapeError(f"expected an input tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ShapeError(f"expected a batch of inputs (B, ...), got shape {tuple(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ShapeError("the input contains NaN or inf")
        if x.is_floating_point():  # float64 reference path: model.double() takes float32 inputs too
            return x.to(self.device, self.analog_layers()[0].weight.dtype)
        return x.to(self.device)

    @torch.no_grad()
    def digital(self, x: Tensor) -> Tensor:
        """The ideal (digital) model's output ``(B, ...)`` with the same weights."""
        self._set(RunContext("digital"))
        try:
            return self.net(self._check(x))
        finally:
            self._set(None)

    @torch.no_grad()
    def digital_layer_io(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Input and output of every analog layer on the ideal (digital) model, by layer name."""
        io: dict[str, tuple[Tensor, Tensor]] = {}
        hooks = [lay.register_forward_hook(
            lambda m, i, o, n=lay.layer_name: io.__setitem__(n, (i[0].detach(), o.detach())))
            for lay in self.analog_layers()]
        try:
            self.digital(x)
        finally:
            for h in hooks:
                h.remove()
        return io

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Set DAC and ADC ranges from inputs ``x`` on the noise-free mapped model (no labels used)."""
        x = self._check(x)
        self._set(RunContext("calibrate", batch=x.shape[0]))
        try:
            self.net(x)
        finally:
            self._set(None)

    def reprogram(self, calibration: Tensor | None = None) -> None:
        """Program every chip again from the current ideal weights (same chips: same seed and ids, so the
        same device draws), clearing tuned registers; re-calibrate converters on ``calibration``."""
        for layer in self.analog_layers():
            layer.program(self.seed, layer.chip_ids.cpu())
            layer.dac_fs.zero_()
            layer.adc_fs = torch.zeros((), device=layer.dac_fs.device)
        if calibration is not None:
            self.calibrate(calibration)

    def is_calibrated(self) -> bool:
        return all(layer.is_calibrated() for layer in self.analog_layers())

    def forward(self, x: Tensor, image_ids: Tensor | None = None, read_key: int | None = None) -> Tensor:
        """Outputs of every chip: ``(chips, B, ...)``.

        ``image_ids`` (B,) label each image for the read-noise stream (default ``0..B-1``); ``read_key``
        fixes the read-noise draw (default: a fresh one per call, as on a real chip).
        """
        x = self._check(x)
        if not self.is_calibrated():
            raise NvcimError("this chip config has converters with ranges to calibrate: call "
                             "model.calibrate(x) with representative inputs first (nvcim.evaluate does it)")
        b = x.shape[0]
        if image_ids is None:
            image_ids = torch.arange(b)
        if read_key is None:
            read_key = rng.key(self.seed, "read", self._reads)
            self._reads += 1
        block, imgs_per = self.plan(x)
        if self.device.type == "cpu" and self.runtime.retain_heap:
            retain_heap()
        outs = []
        var_dtype = variance_dtype(self.runtime, self.analog_layers()[0].weight.dtype, self.device)
        try:
            for c0 in range(0, self.chips, block):
                # a full block always: the last one repeats its final chip, dropped below
                chunk = torch.arange(c0, c0 + block, device=self.device).clamp(max=self.chips - 1)
                keep = min(block, self.chips - c0)
                parts = []
                cache: dict = {}
                for i0 in range(0, b, imgs_per):
                    xb = x[i0:i0 + imgs_per]
                    ctx = RunContext("chip", chunk, xb.shape[0], image_ids[i0:i0 + imgs_per], read_key,
                                     self.compiled, cache, var_dtype=var_dtype)
                    self._set(ctx)
                    y = self.net(xb)
                    parts.append(y.reshape(xb.shape[0], block, *y.shape[1:]).transpose(0, 1)[:keep])
                outs.append(torch.cat(parts, dim=1))
        finally:
            self._set(None)
        return torch.cat(outs, dim=0)

    def plan(self, x: Tensor) -> tuple[int, int]:
        """(chips per block, images per sub-batch): blocks are ``runtime.chip_block`` chips (fewer if the
        model has fewer); sub-batches keep a block's activations within the memory budget and, on CPU,
        within 384 MiB: measured best for LeNet-5 (docs/benchmarks.md), between the per-sub-batch overhead of
        small ones and glibc's 32 MiB mmap limit per tensor of large ones."""
        per = self.bytes_per_chip_image(x)
        block = min(self.runtime.chip_block, self.chips)
        budget = self.runtime.memory_mb * 2**20
        if self.device.type == "cpu":
            budget = min(budget, 384 * 2**20)
        imgs = int(max(1, min(x.shape[0], budget // (per * block))))
        return block, imgs

    def bytes_per_chip_image(self, x: Tensor) -> float:
        """Estimate of the activation memory of one image on one chip (a probe pass, cached per shape)."""
        shape = tuple(x.shape[1:])
        if shape not in self._bytes_per_chip_image:
            total = 0.0
            hooks = []

            def hook(mod: nn.Module, inp: Any, out: Any) -> None:
                nonlocal total
                if not isinstance(out, Tensor):
                    return
                n = out[0].numel()
                if isinstance(mod, AnalogLayer):
                    noisy = 3 if mod.config.device.read_noise else 1
                    n = n * (mod.row_tiles * mod.n_slices * (noisy + 2) + 2) + 3 * inp[0][0].numel()
                total += n
            for m in self.net.modules():
                if not list(m.children()):
                    hooks.append(m.register_forward_hook(hook))
            try:
                self.digital(x[:1])
            finally:
                for h in hooks:
                    h.remove()
            self._bytes_per_chip_image[shape] = 4.0 * total
        return self._bytes_per_chip_image[shape]

    # ---- saving ---------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"config": json.dumps(self.config.to_dict()), "chips": self.chips, "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        cfg = ChipConfig.from_dict(json.loads(state["config"]))
        self.config, self.chips, self.seed = cfg, int(state["chips"]), int(state["seed"])
        for layer in self.analog_layers():
            layer.config, layer.seed = cfg, self.seed
            layer.mapping = type(layer.mapping)(cfg)
            layer._nominal = None


def _swap(module: nn.Module, config: ChipConfig, filter_fn: FilterFn | None, prefix: str = "") -> int:
    n = 0
    for name, child in list(module.named_children()):
        fqn = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (nn.Linear, nn.Conv2d)) and not isinstance(child, AnalogLayer):
            if filter_fn is None or filter_fn(child, fqn):
                new: AnalogLayer = (AnalogLinear(child, config, fqn) if isinstance(child, nn.Linear)
                                    else AnalogConv2d(child, config, fqn))
                setattr(module, name, new)
                n += 1
        else:
            n += _swap(child, config, filter_fn, fqn)
    return n


def convert(
    model: nn.Module,
    config: ChipConfig | str | Path,
    chips: int = 100,
    seed: int = 0,
    filter_fn: FilterFn | None = None,
    runtime: Runtime | None = None,
) -> AnalogModel:
    """Put ``model`` on ``chips`` simulated chips described by ``config`` (a ChipConfig, preset or file).

    Every ``nn.Linear`` and ``nn.Conv2d`` at any depth for which ``filter_fn(module, qualified_name)`` is
    true (all, by default) is swapped **in place** for an analog layer; everything else stays digital.
    All chips are programmed now; chip ``k`` depends only on ``(config, seed, k)``. Returns the wrapper
    whose forward gives ``(chips, B, ...)``. The model is put in eval mode.
    """
    cfg = resolve_config(config)
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ConfigError("chips", chips, "an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", seed, "an integer")
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ConversionError(f"parameter '{name}' contains NaN or inf")
    n = _swap(model, cfg, filter_fn)
    if n == 0:
        raise ConversionError("nothing to convert: the model has no nn.Linear or nn.Conv2d layer"
                              + (" that filter_fn accepts" if filter_fn else ""))
    model.eval()
    attach_tails(model, AnalogConv2d)  # ReLU / max pooling right after a convolution: fused into its epilogue
    wrapper = AnalogModel(model, cfg, chips, seed, runtime or Runtime())
    _check_state_fits(wrapper)
    ids = torch.arange(chips)
    for layer in wrapper.analog_layers():
        layer.program(seed, ids)
    return wrapper.eval()


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (MemAvailable on CPU), or None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def state_bytes_per_chip(model: AnalogModel) -> int:
    """Bytes of programmed state per chip: conductance (4), fault code (1) and drift factor (4, if any) per
    cell, for both sides of every analog layer."""
    d = model.config.device
    has_drift = d.drift.t_read != d.drift.t0 and (d.drift.nu_mean > 0 or d.drift.nu_std > 0)
    per_cell = 5 + (4 if has_drift else 0)
    total = 0
    for lay in model.analog_layers():
        m = lay.mapped()
        total += (m.pos.numel() + m.neg.numel()) * per_cell
    return total


def _check_state_fits(model: AnalogModel) -> None:
    """Refuse, before allocating, a chip count whose programmed state cannot fit in memory (programming
    briefly holds it twice, while chunks are concatenated), instead of dying of out-of-memory."""
    need = 2 * model.chips * state_bytes_per_chip(model)
    free = available_bytes(model.device)
    if free is not None and need > 0.9 * free:
        per = state_bytes_per_chip(model)
        fit = max(1, int(0.9 * free // (2 * per)))
        raise ConversionError(f"chips = {model.chips} needs about {need / 2**30:.1f} GiB to program "
                              f"({per / 2**20:.1f} MiB of state per chip) but only {free / 2**30:.1f} GiB is "
                              f"free on {model.device}: use at most about {fit} chips per run")


def with_runtime(model: AnalogModel, **changes: Any) -> Runtime:
    """A validated copy of the model's runtime settings with ``changes`` applied (and set on the model)."""
    model.runtime = replace(model.runtime, **changes)
    model.compiled = model.runtime.compile == "on"
    return model.runtime
