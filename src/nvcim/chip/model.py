"""``AnalogModel``: a converted model's N chips, run in one batched pass (see :mod:`.conversion`).

An :class:`AnalogModel` maps an input batch ``(B, ...)`` to outputs ``(N, B, ...)``: the chip
dimension leads. Chips are processed in chunks sized to a memory budget, and images in sub-batches when
even one chip would not fit; thanks to counter-based randomness (:mod:`.rng`) the result does not depend
on either.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..config import ChipConfig
from ..config.fields import check, spec
from ..errors import NvcimError, ShapeError
from . import rng, warmup
from .context import CalibratePass, ChipPass, DigitalPass, RunContext
from .heap import retain_heap
from .layers import AnalogLayer

log = logging.getLogger("nvcim")

# Runtime.compile="auto": compile when one chip pass, or all of a model's chip passes so far, move this many
# activation elements (chips x images x elements per chip-image). On the 2-core CI host compiling LeNet-5's
# kernels takes one to two minutes and an eager chip pass runs about 10x slower than a compiled one, so
# 5e8 elements (about 14 000 LeNet-5 chip-images, some 15 s eager) is where one call begins to repay it,
# and 2e9 in all is where a loop of small calls has (docs/user-guide.md, "When nvcim compiles").
COMPILE_CALL_ELEMENTS = 5e8
COMPILE_TOTAL_ELEMENTS = 2e9
COMPILE_DRAWS = 1e9  # cell draws of one programming above which "auto" compiles the draws

# Runtime.chip_block and memory_mb = 0 (auto). A CPU gains nothing from larger blocks (measured on LeNet-5,
# docs/benchmarks.md); a GPU pays a launch per kernel, layer, chip block and sub-batch, so there blocks and
# sub-batches grow to a share of the free memory: a quarter for a block's chip state (its cells made on demand,
# packed values and read-noise variances, write temporaries: about 3x the stored state) and a quarter for its
# activations, the other half left to the allocator and the stored cells' growth.
CPU_CHIP_BLOCK = 10
DEFAULT_MEMORY_MB = 1024.0
CPU_SUB_BATCH_MB = 384.0
GPU_SHARE = 0.25


@dataclass(frozen=True)
class Runtime:
    """How simulation runs (not what the chip is)."""

    memory_mb: float = spec(0.0, "memory budget for the activations of one chip block and image sub-batch; "
                            "0: auto (1024 MiB; on a GPU a quarter of its free memory). On a CPU sub-batches "
                            "also stay within 384 MiB", unit="MiB", lo=1.0, zero_ok=True)
    chip_block: int = spec(0, "chips computed together in one grouped pass; 0: auto (10 on a CPU: 10 divides the "
                           "usual 100 or 1000 chips, so no padded chips are computed; on a GPU as many chips as "
                           "a quarter of its free memory holds, in equal blocks, so that the kernels per layer "
                           "do not grow with the chip count). The last block is padded, so results are bitwise "
                           "identical whatever the block, chip count or memory budget",
                           unit="chips", lo=1, hi=4096, zero_ok=True)
    compile: str = spec("auto", "fuse the analog epilogue with torch.compile: on, off, or auto (compile once "
                        "this model's chip passes are large enough to repay the one-off compile: one call of at "
                        "least 5e8 activation elements, or 2e9 in all; that first call runs eager while a child "
                        "process compiles its kernels, and passes switch when it is done; needs a C++ compiler or "
                        "a GPU). Programming draws compile when this is on, or under auto above 1e9 draws (about "
                        "20x faster on a CPU once compiled). Compiled and eager passes and writes give the same "
                        "numbers to the bit, so this only changes speed",
                        choices=("auto", "on", "off"))
    cells: str = spec("auto", "where programmed cells live: stored (every chip's conductances, fault codes and "
                      "drift factors in memory, 5-9 bytes per cell and chip; needed by methods that read or "
                      "re-program cells: write-verify, map-correct's remapping), on-demand (each pass writes "
                      "the cells of its chip block again from the same counter-based draws: the same numbers, "
                      "memory for one block, a write per block and pass), or auto: stored while every chip's "
                      "state fits in half the free memory, else on-demand (logged)",
                      choices=("auto", "stored", "on-demand"))
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


def gpu_free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on a CUDA device: the driver's free memory plus what PyTorch's caching
    allocator holds unused."""
    free = torch.cuda.mem_get_info(device)[0]
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def even_blocks(chips: int, most: int) -> int:
    """The block size that splits ``chips`` into the fewest equal blocks of at most ``most`` (at least 1,
    at most 4096, Runtime.chip_block's bound)."""
    most = max(1, min(most, 4096, chips))
    return -(-chips // -(-chips // most))


def can_compile(device: torch.device) -> bool:
    """torch.compile needs a C++ compiler on CPU (Triton on GPU ships with torch)."""
    return device.type == "cuda" or any(shutil.which(c) for c in ("c++", "g++", "clang++"))


class AnalogModel(nn.Module):
    """A model whose Linear/Conv2d layers run on ``chips`` simulated chips. Output: ``(chips, B, ...)``."""

    def __init__(self, net: nn.Module, config: ChipConfig, chips: int, seed: int, runtime: Runtime) -> None:
        super().__init__()
        self.net, self.config, self.chips, self.seed, self.runtime = net, config, chips, seed, runtime
        self._reads = 0
        self._elements_run = 0.0  # activation elements of every chip pass so far (Runtime.compile="auto")
        self._announced = False
        self._warmup: warmup.Warmup | None = None  # the background compile of this model's kernels
        self.report: Any = None  # the ConversionReport of convert()
        self._bytes_per_chip_image: dict[tuple[int, ...], float] = {}
        self._auto: tuple[Runtime, int, float] | None = None  # (for, chips per block, activation bytes)
        self._batch_checked: set[tuple[int, ...]] = set()  # input shapes whose layer inputs follow the batch

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
        self._set(DigitalPass())
        try:
            with _modules_run():
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
    def calibrate(self, x: Tensor, inputs: bool = True) -> None:
        """Set DAC and ADC ranges from inputs ``x`` on the noise-free mapped model (no labels used).
        ``inputs=False``: keep the DAC ranges already set (the ADC ranges then see the inputs as those DACs
        quantise them) and set the ADC ranges only."""
        x = self._check(x)
        self.check_batch_inputs(x)
        self._set(CalibratePass(batch=x.shape[0], inputs=inputs))
        try:
            with _modules_run():
                self.net(x)
        finally:
            self._set(None)

    def program(self, chip_ids: Tensor, on_demand: bool | None = None) -> None:
        """Program chips ``chip_ids`` (global ids) on every analog layer from the current ideal weights.
        ``on_demand``: make the cells for each pass's chip block instead of storing them (None: as before)."""
        if self.device.type == "cpu" and self.runtime.retain_heap:
            retain_heap()  # the write temporaries are reused from the heap, not faulted in per chunk
        layers = self.analog_layers()
        draws = 2 * sum(lay.weight.numel() for lay in layers) * len(chip_ids)
        # compiled draws: the same bits, faster, but their first compile costs tens of seconds with a cold
        # inductor cache (LeNet-5 on 50 chips: 36 s of a 0.2 s conversion); "auto" compiles them only where
        # eager writing would take longer than that (about 2.5e7 draws/s eager on 2 cores)
        compiled = self.runtime.compile == "on" or (self.runtime.compile == "auto" and draws >= COMPILE_DRAWS)
        for layer in layers:
            xb = layer.crossbar
            xb.compile_draws = compiled
            xb.program(self.seed, chip_ids, on_demand=xb.on_demand if on_demand is None else on_demand)

    @property
    def cells_on_demand(self) -> bool:
        """Whether the cells are made for each pass's chip block rather than stored (``Runtime.cells``)."""
        return self.analog_layers()[0].crossbar.on_demand

    def reprogram(self, calibration: Tensor | None = None, converters: str = "all") -> None:
        """Program every chip again from the current ideal weights (same chips: same seed and ids, so the
        same device draws), clearing tuned registers. The converter ranges stay as they are unless
        ``calibration`` inputs are given: then ``converters`` "all" re-calibrates the DAC and ADC ranges,
        "adc" the ADC ranges only (the DAC ranges kept)."""
        if converters not in ("all", "adc"):
            raise NvcimError(f"converters = {converters!r} is invalid: allowed 'all', 'adc'")
        self.program(self.analog_layers()[0].crossbar.chip_ids.cpu())
        if calibration is None:
            return
        for layer in self.analog_layers():
            layer.converters.reset(dac=converters == "all")
        self.calibrate(calibration, inputs=converters == "all")

    def runtime_record(self) -> dict[str, Any]:
        """The performance switches this model runs with, for a result's record: every ``Runtime`` field,
        ``variance`` resolved for this device (the one switch that changes numbers: bfloat16 rounds the
        read-noise variance products), the random-draw scheme version, and the chip block and activation
        budget that ``auto`` resolved to on this device (which change no number)."""
        from dataclasses import asdict

        fmt = variance_dtype(self.runtime, torch.float32, self.device)
        planned = {}
        if self._auto is not None and self._auto[0] == self.runtime:
            planned = {"chip_block_resolved": self._auto[1], "memory_mb_resolved": round(self._auto[2] / 2**20, 1)}
        return {**asdict(self.runtime), "variance_resolved": "bfloat16" if fmt == torch.bfloat16 else "float32",
                "draws": rng.DRAWS, **planned}

    def is_calibrated(self) -> bool:
        return all(layer.converters.is_calibrated() for layer in self.analog_layers())

    def forward(self, x: Tensor, image_ids: Tensor | None = None, read_key: int | None = None) -> Tensor:
        """Outputs of every chip: ``(chips, B, ...)``.

        ``image_ids`` (B,) label each image for the read-noise stream (default ``0..B-1``); ``read_key``
        fixes the read-noise draw (default: a fresh one per call, as on a real chip). This is the fast path:
        the same :class:`Runtime` policy as :func:`nvcim.evaluate` decides whether it runs compiled.

        Gradients: a chip pass records them only where they can mean something on a chip, that is for an
        input that requires them or for a chip register a method trains (``tune_gain``/``tune_offset``,
        ``sram_w`` with ``requires_grad``); not for the ideal model's parameters, which the programmed chip
        does not read. Without either, the pass runs as under ``torch.no_grad()``.
        """
        x = self._check(x)
        self.check_batch_inputs(x)
        if not self.is_calibrated():
            raise NvcimError("this chip config has converters with ranges to calibrate: call "
                             "model.calibrate(x) with representative inputs first (nvcim.evaluate does it)")
        grad = torch.is_grad_enabled() and (x.requires_grad or self._registers_need_grad())
        with torch.set_grad_enabled(grad):
            how = "off" if grad else self._compile_now(x)
            if how != "record":
                with warmup.sharing_cores(self._warmup):
                    return self._chip_pass(x, image_ids, read_key, compiled=how == "on")
            with warmup.recording() as calls:  # a compiled pass's decisions, its kernels run eager and noted
                out = self._chip_pass(x, image_ids, read_key, compiled=True)
            self._warmup = warmup.Warmup(calls).start()
            return out

    def _registers_need_grad(self) -> bool:
        return any(t.requires_grad for lay in self.analog_layers()
                   for t in (lay.crossbar.tune_gain, lay.crossbar.tune_offset, lay.crossbar.sram_w))

    def _compile_now(self, x: Tensor) -> str:
        """Runtime.compile for this pass: "on" or "off" (compiled or eager), or "record": eager, recording its
        kernels for a background compile. "on"/"off" are forced; "auto" compiles once the work repays it and
        the kernels are ready: the first pass that would repay it runs eager while its kernels compile in a
        child process (:mod:`.warmup`), so the first result does not wait for inductor, and passes switch
        to the compiled kernels when they are ready. Compiled and eager passes give the same numbers
        (tested), so the choice, and hence the call pattern, changes speed only."""
        mode = self.runtime.compile
        if mode != "auto":
            return mode
        elements = self.bytes_per_chip_image(x) / 6.0 * self.chips * x.shape[0]
        self._elements_run += elements
        if not can_compile(self.device) or (elements < COMPILE_CALL_ELEMENTS
                                            and self._elements_run < COMPILE_TOTAL_ELEMENTS):
            return "off"
        if self._warmup is None:
            if not self._announced:
                self._announced = True
                log.info("compiling the chip kernels of this model with torch.compile in the background (once "
                         "per process and layer shape; a minute or two on a small CPU, seconds when cached); "
                         "chip passes run eager until it is done; Runtime(compile='off') skips it")
            return "record"
        return "on" if self._warmup.ready else "off"

    def _chip_pass(self, x: Tensor, image_ids: Tensor | None, read_key: int | None, compiled: bool) -> Any:
        b = x.shape[0]
        if image_ids is None:
            image_ids = torch.arange(b)
        if read_key is None:
            read_key = rng.key(self.seed, "read", self._reads)
            self._reads += 1
        if self.device.type == "cpu" and self.runtime.retain_heap:
            retain_heap()
        ctx = ChipPass(read_key=read_key, compiled=compiled,
                         var_dtype=variance_dtype(self.runtime, self.analog_layers()[0].weight.dtype, self.device))
        try:
            with _modules_run():
                blocks, spec = self._blocks(x, image_ids, ctx)
        finally:
            self._set(None)
        unused = [lay.layer_name for lay in self.analog_layers() if id(lay) not in ctx.ran]
        if unused:
            raise NvcimError(f"converted layer(s) {', '.join(unused)} did not run in the chip pass: the model "
                             "uses their weights without calling the module (as nn.MultiheadAttention does "
                             "with out_proj), so the output would not be the chip's; leave them digital with "
                             "filter_fn")
        leaves = [_join([[p[i] for p in parts] for parts in blocks]) for i in range(len(blocks[0][0]))]
        return tree_unflatten(leaves, spec)

    def _blocks(self, x: Tensor, image_ids: Tensor, base: ChipPass) -> tuple[list[list[list[Any]]], Any]:
        """Every chip block on every image sub-batch: the output leaves of each pass, ``(keep, b, ...)``, by
        block and sub-batch, and the output's tree structure."""
        block, imgs_per = self.plan(x)
        b = x.shape[0]
        blocks, spec = [], None
        for c0 in range(0, self.chips, block):
            # a full block always: the last one repeats its final chip, dropped below
            chunk = torch.arange(c0, c0 + block, device=self.device).clamp(max=self.chips - 1)
            keep = min(block, self.chips - c0)
            parts = []
            cache: dict = {}
            for i0 in range(0, b, imgs_per):
                xb = x[i0:i0 + imgs_per]
                # every chip's copy of the input, from the model's entry on: residuals, reshapes that
                # take the batch size from a tensor, learned queries and the like see one batch
                xe = xb.repeat_interleave(block, dim=0) if block > 1 else xb
                self._set(replace(base, chips=chunk, batch=xb.shape[0], image_ids=image_ids[i0:i0 + imgs_per],
                                  cache=cache, entry=xe, entry_src=xb, entry_version=xe._version, reads={}))
                leaves, spec = tree_flatten(self.net(xe))
                parts.append([_per_chip(leaf, xb.shape[0], block, keep) for leaf in leaves])
            blocks.append(parts)
        return blocks, spec

    def check_batch_inputs(self, x: Tensor) -> None:
        """Raise a clear error if an analog layer multiplies a tensor that does not follow the batch (a learned
        parameter, as DETR's or a Perceiver's queries): the ideal model is run on 1 and on 2 images (once per
        input shape), and every analog layer's input must change shape with them. A chip pass carries each
        chip's activations along the batch dimension, so a product of a batch-free tensor has nowhere to put
        its chips: it would mix them, or fail deep inside the model."""
        shape = tuple(x.shape[1:])
        if shape in self._batch_checked:
            return
        seen: dict[str, list[list[tuple[int, ...]]]] = {}
        saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in self.net.modules()]
        for m, _, _ in saved:  # the user's hooks (and Chip.infer's captures) do not see the probe passes
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
        for lay in self.analog_layers():  # gone with the restore of the saved hooks below
            lay.register_forward_hook(lambda m, i, o, n=lay.layer_name: seen[n][-1].append(tuple(i[0].shape))
                                      if i and isinstance(i[0], Tensor) else None)
        try:
            for probe in (x[:1], torch.cat([x[:1], x[:1]])):
                for lay in self.analog_layers():
                    seen.setdefault(lay.layer_name, []).append([])
                self.digital(probe)
        finally:
            for m, fwd, pre in saved:
                m._forward_hooks, m._forward_pre_hooks = fwd, pre
        for name, (one, two) in seen.items():
            same = [s for s, t in zip(one, two) if s == t]
            if len(one) == len(two) and same:
                raise NvcimError(
                    f"analog layer '{name}' multiplies a tensor that does not depend on the batch (shape "
                    f"{same[0]} for 1 and for 2 images: a learned parameter, such as DETR's or a Perceiver's "
                    f"queries). A chip pass carries each chip along the batch dimension, so this product cannot "
                    f"be given one without mixing chips. Leave it digital: convert(..., filter_fn=lambda m, n: "
                    f"n != '{name}'), or apply the layer to a batch-shaped tensor (queries expanded to the batch)")
        self._batch_checked.add(shape)

    def plan(self, x: Tensor) -> tuple[int, int]:
        """(chips per block, images per sub-batch): blocks of :meth:`chip_block` chips; sub-batches keep a
        block's activations within :meth:`activation_budget`."""
        per = self.bytes_per_chip_image(x)
        if self._auto is None or self._auto[0] != self.runtime:
            # resolved once per runtime: a GPU's free memory moves, and a new block shape would recompile
            self._auto = (self.runtime, self.chip_block(), self.activation_budget())
        _, block, budget = self._auto
        imgs = int(max(1, min(x.shape[0], budget // (per * block))))
        return block, imgs

    def chip_block(self) -> int:
        """Chips per grouped pass: ``Runtime.chip_block``, or for 0 (auto) 10 on a CPU and, on a GPU, as many
        chips as a quarter of its free memory holds (``GPU_SHARE``), in equal blocks (100 chips that fit 64 at
        a time run as two blocks of 50, not 64 and a padded 36)."""
        if self.runtime.chip_block:
            return min(self.runtime.chip_block, self.chips)
        if self.device.type != "cuda":
            return min(CPU_CHIP_BLOCK, self.chips)
        from .conversion import state_bytes_per_chip

        per_chip = 3 * state_bytes_per_chip(self)
        return even_blocks(self.chips, int(GPU_SHARE * gpu_free_bytes(self.device) // max(1, per_chip)))

    def activation_budget(self) -> float:
        """Bytes of activations per chip block and image sub-batch: ``Runtime.memory_mb``, or for 0 (auto)
        1024 MiB, and on a GPU a quarter of its free memory. On a CPU at most 384 MiB: measured best for
        LeNet-5 (docs/benchmarks.md), between the per-sub-batch overhead of small sub-batches and glibc's
        32 MiB mmap limit per tensor of large ones."""
        mb = self.runtime.memory_mb
        if self.device.type == "cpu":
            return min(mb or DEFAULT_MEMORY_MB, CPU_SUB_BATCH_MB) * 2**20
        if mb:
            return mb * 2**20
        if self.device.type == "cuda":
            return GPU_SHARE * gpu_free_bytes(self.device)
        return DEFAULT_MEMORY_MB * 2**20

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
                if isinstance(m, AnalogLayer) or not list(m.children()):  # a layer owns its crossbar
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
            layer.reconfigure(cfg, self.seed)


@contextlib.contextmanager
def _modules_run() -> Iterator[None]:
    """Switch off PyTorch's fused transformer fast path, which reads a TransformerEncoderLayer's Linear weights
    itself instead of calling the (analog) modules."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _per_chip(leaf: Any, b: int, block: int, keep: int) -> Any:
    """One output leaf of a block pass, ``(B block, ...)`` image-major -> ``(keep, B, ...)``."""
    if not isinstance(leaf, Tensor):
        return leaf
    if leaf.dim() == 0 or leaf.shape[0] != b * block:
        raise ShapeError(f"a model output has shape {tuple(leaf.shape)}: every output tensor must keep the "
                         f"batch as its first dimension ({b} images x {block} chips in this pass)")
    return leaf.reshape(b, block, *leaf.shape[1:]).transpose(0, 1)[:keep]


def _join(blocks: list[list[Any]]) -> Any:
    """Per block, per sub-batch pieces of one output leaf -> ``(chips, B, ...)``."""
    if not isinstance(blocks[0][0], Tensor):
        return blocks[0][0]
    return torch.cat([torch.cat(subs, dim=1) for subs in blocks], dim=0)


def with_runtime(model: AnalogModel, **changes: Any) -> Runtime:
    """A validated copy of the model's runtime settings with ``changes`` applied (and set on the model)."""
    model.runtime = replace(model.runtime, **changes)
    return model.runtime
