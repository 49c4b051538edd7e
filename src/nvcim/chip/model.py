"""``AnalogModel``: a converted model's N chips (see :mod:`.conversion`), mapping an input batch ``(B, ...)``
to outputs ``(N, B, ...)``. Chips run in blocks and images in sub-batches sized to a memory budget
(:mod:`.runtime`); with counter-based randomness (:mod:`.rng`) the result does not depend on either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..config import ChipConfig
from ..errors import NvcimError, ShapeError
from . import probes, rng, warmup
from .context import CalibratePass, ChipPass, DigitalPass, RunContext
from .heap import retain_heap
from .layers import AnalogLayer
from .runtime import Runtime, join_blocks, per_chip, variance_dtype
from .runtime import activation_budget as runtime_activation_budget
from .runtime import chip_block as runtime_chip_block

log = logging.getLogger("nvcim")

# Runtime.compile="auto": compile when one chip pass, or all of a model's chip passes so far, move this many
# activation elements (chips x images x elements per chip-image). On the 2-core CI host compiling LeNet-5's
# kernels takes one to two minutes and an eager chip pass runs about 10x slower than a compiled one, so
# 5e8 elements (about 14 000 LeNet-5 chip-images, some 15 s eager) is where one call begins to repay it,
# and 2e9 in all is where a loop of small calls has (docs/user-guide.md, "When nvcim compiles").
COMPILE_CALL_ELEMENTS = 5e8
COMPILE_TOTAL_ELEMENTS = 2e9
COMPILE_DRAWS = 1e9  # cell draws of one programming above which "auto" compiles the draws


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
        self._profiles: dict[tuple[int, ...], probes.ActivationProfile] = {}
        self._auto: tuple[Runtime, int, float] | None = None  # (for, chips per block, activation bytes)
        self._batch_checked: set[tuple[int, ...]] = set()  # input shapes whose layer inputs follow the batch

    # ---- structure ------------------------------------------------------------------------------
    def analog_layers(self) -> list[AnalogLayer]:
        """The converted layers, in module order."""
        return [m for m in self.net.modules() if isinstance(m, AnalogLayer)]

    def _set(self, ctx: RunContext | None) -> None:
        for layer in self.analog_layers():
            layer.ctx = ctx

    @contextlib.contextmanager
    def running(self, ctx: RunContext) -> Iterator[None]:
        """Inside the block every analog layer runs the pass ``ctx`` (and PyTorch's fused transformer path,
        which would read the layers' weights itself, is off); afterwards the model is plain again."""
        self._set(ctx)
        try:
            with _modules_run():
                yield
        finally:
            self._set(None)

    @property
    def device(self) -> torch.device:
        return next(iter(self.analog_layers())).weight.device

    # ---- running --------------------------------------------------------------------------------
    def check_input(self, x: Any) -> Tensor:
        """``x`` as the model takes it (on its device and in its float format), or a clear error."""
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
        with self.running(DigitalPass()):
            return self.net(self.check_input(x))

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
        x = self.check_input(x)
        self.check_batch_inputs(x)
        with self.running(CalibratePass(batch=x.shape[0], inputs=inputs)):
            self.net(x)

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
        x = self.check_input(x)
        self.check_batch_inputs(x)
        if not self.is_calibrated():
            raise NvcimError("this chip config has converters with ranges to calibrate: call "
                             "model.calibrate(x) with representative inputs first (nvcim.evaluate does it)")
        grad = torch.is_grad_enabled() and (x.requires_grad or self._registers_need_grad())
        with torch.set_grad_enabled(grad):
            how = "off" if grad else self._compile_now(x)
            if how == "record":  # a compiled pass's decisions; kernels not compiled before run eager, noted
                with warmup.recording() as calls:
                    out = self._chip_pass(x, image_ids, read_key, compiled=True)
                self._warmup = warmup.Warmup(calls).start()
                if self._warmup.records and not self._announced:
                    self._announced = True
                    n = len(self._warmup.records)
                    log.info("compiling %d chip kernel%s with torch.compile in the background (once per machine "
                             "and layer shape, a few minutes on a small CPU; it goes on if this process ends); "
                             "until then kernels not compiled yet run eager; Runtime(compile='off') skips it",
                             n, "" if n == 1 else "s")
                return out
            with warmup.sharing_cores(self._warmup), \
                    warmup.hybrid() if how == "hybrid" else contextlib.nullcontext():
                return self._chip_pass(x, image_ids, read_key, compiled=how != "off")

    def _registers_need_grad(self) -> bool:
        return any(t.requires_grad for lay in self.analog_layers()
                   for t in (lay.crossbar.tune_gain, lay.crossbar.tune_offset, lay.crossbar.sram_w))

    def _compile_now(self, x: Tensor) -> str:
        """Runtime.compile for this pass: "on" or "off" (compiled or eager), "hybrid" (each kernel compiled
        where this machine compiled it before, else eager), or "record": hybrid, noting the eager kernels
        for a background compile. "on"/"off" are forced; "auto" compiles once the work repays it: the first
        pass that would repay it is recorded while the kernels it lacks compile in a child process
        (:mod:`.warmup`), so the first result does not wait for inductor; passes are hybrid while the child
        runs and compiled once it is done. Compiled and eager passes give the same numbers (tested), so the
        choice, and hence the call pattern, changes speed only."""
        mode = self.runtime.compile
        if mode != "auto":
            return mode
        elements = self.profile(x).work_elements * self.chips * x.shape[0]
        self._elements_run += elements
        if not can_compile(self.device) or (elements < COMPILE_CALL_ELEMENTS
                                            and self._elements_run < COMPILE_TOTAL_ELEMENTS):
            return "off"
        if self._warmup is None:
            return "record"
        if self._warmup.ready:
            return "on"
        return "hybrid" if self._warmup.running else "off"

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
        leaves = [join_blocks([[p[i] for p in parts] for parts in blocks]) for i in range(len(blocks[0][0]))]
        return tree_unflatten(leaves, spec)

    def _blocks(self, x: Tensor, image_ids: Tensor, base: ChipPass) -> tuple[list[list[list[Any]]], Any]:
        """Every chip block on every image sub-batch: the output leaves of each pass, ``(keep, b, ...)``, by
        block and sub-batch, and the output's tree structure."""
        block, imgs_per = self.plan(x)
        b = x.shape[0]
        blocks, spec = [], None
        for c0 in range(0, self.chips, block):
            # a full block always: the last one repeats its final chip, dropped below
            ids = tuple(min(i, self.chips - 1) for i in range(c0, c0 + block))  # on the host, and on the device:
            chunk = torch.tensor(ids, device=self.device)
            keep = min(block, self.chips - c0)
            parts = []
            cache: dict = {}
            for i0 in range(0, b, imgs_per):
                xb = x[i0:i0 + imgs_per]
                # every chip's copy of the input, from the model's entry on: residuals, reshapes that
                # take the batch size from a tensor, learned queries and the like see one batch
                xe = xb.repeat_interleave(block, dim=0) if block > 1 else xb
                self._set(replace(base, chips=chunk, block=ids, batch=xb.shape[0],
                                  image_ids=image_ids[i0:i0 + imgs_per], cache=cache, entry=xe,
                                  entry_src=xb, entry_version=xe._version, reads={}))
                leaves, spec = tree_flatten(self.net(xe))
                parts.append([per_chip(leaf, xb.shape[0], block, keep) for leaf in leaves])
            blocks.append(parts)
        return blocks, spec

    def check_batch_inputs(self, x: Tensor) -> None:
        """A clear error if an analog layer multiplies a tensor that does not follow the batch
        (:func:`.probes.check_batch_inputs`), once per input shape."""
        shape = tuple(x.shape[1:])
        if shape not in self._batch_checked:
            probes.check_batch_inputs(self, x)
            self._batch_checked.add(shape)

    def plan(self, x: Tensor) -> tuple[int, int]:
        """(chips per block, images per sub-batch): blocks of :meth:`chip_block` chips; sub-batches keep a
        block's activations within :meth:`activation_budget`."""
        per = self.profile(x).peak_bytes
        if self._auto is None or self._auto[0] != self.runtime:
            # resolved once per runtime: a GPU's free memory moves, and a new block shape would recompile
            self._auto = (self.runtime, self.chip_block(), self.activation_budget())
        _, block, budget = self._auto
        imgs = int(max(1, min(x.shape[0], budget // (per * block))))
        return block, imgs

    def chip_block(self) -> int:
        """Chips per grouped pass (:func:`.runtime.chip_block`)."""
        def chip_bytes() -> int:
            from .conversion import state_bytes_per_chip

            return 3 * state_bytes_per_chip(self)

        return runtime_chip_block(self.runtime, self.chips, self.device, chip_bytes)

    def activation_budget(self) -> float:
        """Bytes of activations per chip block and image sub-batch (:func:`.runtime.activation_budget`)."""
        return runtime_activation_budget(self.runtime, self.device)

    def profile(self, x: Tensor) -> probes.ActivationProfile:
        """Activation memory and work of one image on one chip (:func:`.probes.activation_profile`, cached
        per input shape)."""
        shape = tuple(x.shape[1:])
        if shape not in self._profiles:
            self._profiles[shape] = probes.activation_profile(self, x)
        return self._profiles[shape]

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
    """PyTorch's fused transformer path off: it reads a TransformerEncoderLayer's weights itself."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def with_runtime(model: AnalogModel, **changes: Any) -> Runtime:
    """A validated copy of the model's runtime settings with ``changes`` applied (and set on the model)."""
    model.runtime = replace(model.runtime, **changes)
    return model.runtime
