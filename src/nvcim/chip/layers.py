"""Analog layers: ``nn.Module`` drop-ins that hold N programmed chips; :class:`AnalogLayer` is their forward
pass (the chip pass, calibration, noise-injection training and the digital model), on top of the cells
(:mod:`.cells`) and converters (:mod:`.converters`). The layer kinds live in files of their own
(:mod:`.linear`, :mod:`.conv2d`, ...) and register the module type they replace.

Activations of a chip block of ``c`` chips travel through the model as ``(B * c, ...)``, image major and
chip minor, from the model's entry on (:class:`~nvcim.chip.model.AnalogModel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..circuits import get_adc
from ..config.schema import ChipConfig
from ..errors import NvcimError, ShapeError
from ..mapping import Mapping, get_mapping
from . import managed_io, rng
from .context import (
    CalibratePass,
    ChipPass,
    EpilogueOperands,
    Pass,
    Prepared,
    ReadNoiseOperands,
    RunContext,
    TrainPass,
    _plain,
)
from .converters import Converters
from .crossbar import Crossbar
from .geometry import TileGeometry
from .kernel import TailSpec, epilogue
from .tail import Tail, mark
from .train_read import fresh_chip, train_read


class AnalogLayer(nn.Module):
    """Shared machinery of analog layers; subclasses define the geometry and the matrix product. The
    per-chip state is the :class:`~nvcim.chip.crossbar.Crossbar`'s (``self.crossbar``)."""

    channel_dim = 1  # where the output columns are in the digital output (convolutions: channels)
    weight: Tensor
    bias: Tensor | None

    def __init__(self, digital: nn.Module, config: ChipConfig, name: str) -> None:
        super().__init__()
        self.config, self.layer_name = config, name
        self.weight = digital.weight  # type: ignore[assignment]
        self.bias = digital.bias  # type: ignore[assignment]
        self.ctx: RunContext | None = None
        self.tail: Tail | None = None  # digital modules after this layer that its fused epilogue may apply
        out, k = self.matrix_shape()
        self.out_features, self.k = out, k
        geometry = self.tile_geometry()  # the state lives where the weights are (CPU or GPU)
        self.crossbar = Crossbar(name, config, get_mapping(config), geometry, self.weight_matrix)
        self.converters = Converters(name, config, geometry, self.weight.device)
        # the packed weights of the last chip block read, kept between calls: packing a ResNet-18 block
        # costs about as much as its products for 30 images, and most runs read one block again and again
        self._packed_memo: tuple | None = None

    # ---- geometry (the layer kinds define row_tiles, rows_per_tile and the matrix layout) ----------
    @property
    def row_tiles(self) -> int:
        """Number of row tiles T (partial sums digitised separately)."""
        raise NotImplementedError

    def rows_per_tile(self) -> int:
        """Rows used in each row tile. Rows are spread evenly over the T tiles a layer needs (400 rows on
        128-row arrays: 4 x 100, not 3 x 128 + 16): no tile idles, and none of the matrix product is
        spent on padding."""
        raise NotImplementedError

    def row_tile_index(self) -> Tensor:
        """Row tile of each of the K weight rows, shape (K,)."""
        return self.geometry.tile_index()

    def tile_geometry(self) -> TileGeometry:
        return TileGeometry(self.out_features, self.k, self.row_tiles, self.rows_per_tile(), self.config.array.cols,
                            self.config.array.rows)

    @property
    def geometry(self) -> TileGeometry:
        return self.crossbar.geometry

    @property
    def mapping(self) -> Mapping:
        return self.crossbar.mapping

    @property
    def n_slices(self) -> int:
        return self.crossbar.n_slices

    @property
    def n_chips(self) -> int:
        return self.crossbar.n_chips

    def matrix_shape(self) -> tuple[int, int]:
        """(O, K): columns and rows of the matrix the arrays hold."""
        return self.weight.shape[0], self.weight[0].numel()

    def as_matrix(self, t: Tensor) -> Tensor:
        """A weight-shaped tensor (the weights, their gradient, a score per weight; any leading dims before
        the weight's shape) as (..., O, K), the cell layout of the arrays."""
        return t.reshape(*t.shape[: t.dim() - self.weight.dim()], self.out_features, self.k)

    def from_matrix(self, m: Tensor) -> Tensor:
        """Inverse of :meth:`as_matrix`: (..., O, K) -> (..., *weight.shape)."""
        return m.reshape(*m.shape[:-2], *self.weight.shape)

    def weight_matrix(self) -> Tensor:
        """The ideal weights as the crossbar matrix (O, K) (what the chips are programmed from)."""
        return self.as_matrix(self.weight)

    def reconfigure(self, config: ChipConfig, seed: int) -> None:
        """Take a new design (a loaded model's config)."""
        self.config = config
        geometry = self.tile_geometry()
        self.crossbar.reconfigure(config, get_mapping(config), geometry, seed)
        self.converters.reconfigure(config, geometry)

    def fresh_weights(self, chip_id: int, censor: float = 0.0) -> Tensor:
        """Effective weights (shape of ``weight``) of a new training chip (:func:`.train_read.fresh_chip`)."""
        return self.from_matrix(fresh_chip(self.crossbar, chip_id, censor)[0])

    # ---- forward --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return (f"{self.layer_name!r}, out={self.out_features}, K={self.k}, chips={self.n_chips}, "
                f"tiles={self.row_tiles}x{self.geometry.n_col_tiles}, slices={self.n_slices}")

    def check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def digital(self, x: Tensor) -> Tensor:
        return self.digital_with(x, self.weight)

    def pad_input(self, x: Tensor) -> Tensor:
        """The input as the array receives it (a convolution may pad it digitally first)."""
        return x

    def unfold_input(self, v: Tensor) -> Tensor:
        """Inputs ``v`` (B, ...) as the rows the arrays multiply, (positions, K)."""
        return v.reshape(-1, self.k)

    def tile_input(self, v: Tensor, cp: int) -> Tensor:
        """The layer's input ``v`` (N, ...), N = B cp (cp = 1: one input for all chips, else one per chip,
        chip-minor), as the rows each row tile multiplies: (B, cp, L, g, T, R), laid out in memory as
        (cp, g, T, B, L, R), the order of the per-array products (:mod:`.managed_io`)."""
        t = self.geometry.to_tile_rows(self.unfold_input(v))  # (N L g, T, R)
        g = int(getattr(self, "groups", 1))
        t = t.view(v.shape[0] // cp, cp, -1, g, *t.shape[-2:])
        return t.permute(1, 3, 4, 0, 2, 5).contiguous().permute(3, 0, 4, 1, 2, 5)

    def tile_absmax(self, v: Tensor, rows: Tensor, cp: int) -> Tensor:
        """max |x| over each tile's rows of each input vector, (B, cp, L, g, T, 1): of ``rows``, the
        :meth:`tile_input` of ``v``."""
        return torch.linalg.vector_norm(rows, math.inf, -1, keepdim=True)

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        """The digital layer with weights ``w``."""
        raise NotImplementedError

    def pack(self, w: Tensor, shared: bool) -> Tensor:
        """Per-chip weights w (c, S, O, K) in the layout :meth:`mvm` multiplies with."""
        raise NotImplementedError

    def prepare(self, x: Tensor, shared: bool, c: int) -> Prepared:
        """Inputs in the layout :meth:`mvm` multiplies (one copy, shared by the value and variance products)."""
        raise NotImplementedError

    def mvm(self, p: Prepared, packed: Tensor, shared: bool, c: int, s: int = 0) -> Tensor:
        """Tile outputs (B, L, c, T, S, O) of prepared inputs and packed weights (``s`` slices; 0: the
        layer's)."""
        raise NotImplementedError

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        """(B, L, c, O) -> the activation layout (B * c, ...)."""
        raise NotImplementedError

    # ---- the pass: one dispatch per forward ------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The digital layer, or what the pass that the model set (``self.ctx``) reads: one dispatch,
        ``ctx.run``, to :meth:`digital`, :meth:`train_read`, :meth:`calibration_read` or :meth:`chip_read`."""
        self.check_input(x)
        return self.digital(x) if self.ctx is None else self.ctx.run(self, x)

    def train_read(self, x: Tensor, ctx: TrainPass) -> Tensor:
        """Noise-injection training (:func:`.train_read.train_read`)."""
        return train_read(self, x, ctx)

    def calibration_read(self, x: Tensor, ctx: CalibratePass) -> Tensor:
        """A read of the noise-free mapped targets that sets the DAC range (from ``x``) and the ADC ranges
        (from the tile signals); a layer read several times in one forward (a recurrent cell) takes the
        widest range of them."""
        if x.shape[0] != ctx.batch:
            raise ShapeError(f"{self.layer_name}: batch {x.shape[0]} != {ctx.batch}")
        again = ctx.reads.get(id(self), 0) > 0
        ctx.reads[id(self)] = ctx.reads.get(id(self), 0) + 1
        if ctx.inputs or not self.converters.is_calibrated():
            self.converters.calibrate_input(x, again)
        if self.config.circuit.managed_io:
            k = self._operands(ctx, 1, x, None)
            out, signals = managed_io.read(self, x, True, 1, k, ctx, None)
            assert signals is not None
            self.converters.calibrate_output(signals, again)
            return self.finish(out, self.pad_input(x), True)
        x = self.pad_input(x)
        xp = self.prepare(self.converters.apply_dac(x), True, 1)
        y = self.mvm(xp, self._packed(ctx, True, None)[0], True, 1)
        self.converters.calibrate_output(y, again)
        k = self._operands(ctx, 1, y, None)
        return self.finish(epilogue(False)(y, None, k, hw=self._positions_hw(x, int(y.shape[1]))), x, True)

    def chip_read(self, x: Tensor, ctx: ChipPass) -> Tensor:
        """A read of this pass's chips: DAC, the tiled product of the programmed cells, read noise, the
        per-read epilogue (:mod:`.kernel`), the per-chip registers and SRAM. ``x`` is ``(B c, ...)`` (each
        chip's own input) or ``(B, ...)`` (one input shared by the chips: one product serves them all)."""
        assert ctx.chips is not None
        b, c = ctx.batch, int(ctx.chips.numel())
        ctx.ran.add(id(self))
        if x is ctx.entry and ctx.entry_src is not None and x._version == ctx.entry_version:
            x, shared = ctx.entry_src, True  # the model's own input: one shared product serves all chips
        elif x.shape[0] == b * c:
            shared = c == 1
        elif x.shape[0] == b:
            shared = True
        else:
            raise ShapeError(f"{self.layer_name}: got a batch of {x.shape[0]} rows, expected {b} (shared "
                             f"input) or {b * c} (images x chips)")
        if self.config.circuit.managed_io:
            k = self._operands(ctx, c, x, ctx)
            out = managed_io.read(self, x, shared, c, k, ctx, ctx)[0]
            absmax = self.config.circuit.input_scaling == "absmax"  # the SRAM multiplies the digital input
            out = self._registers(out, k, ctx, lambda: self.prepare(  # made only when there is an SRAM
                self.pad_input(x if absmax else self.converters.apply_dac(x)), shared, c), shared, c)
            return self.finish(out, self.pad_input(x), shared)
        x = self.pad_input(x)
        xp = self.prepare(self.converters.apply_dac(x, ctx.compiled), shared, c)
        wy, wv = self._packed(ctx, shared, ctx)
        y = self.mvm(xp, wy, shared, c)
        noise = None
        if wv is not None:  # read noise
            noise = ReadNoiseOperands(self.mvm(xp.squared(ctx.var_dtype), wv, shared, c), *self.read_keys(ctx))
        k = self._operands(ctx, c, y, ctx)
        tail = self._fused_tail(ctx, k, x)
        if tail is not None and self.tail is not None:
            out = epilogue(ctx.compiled)(y, noise, k, tail=tail)  # (B, c, H', W', O)
            n, _, ho, wo, o = out.shape
            return mark(out.view(n * c, ho, wo, o).permute(0, 3, 1, 2), self.tail)
        out = epilogue(ctx.compiled)(y, noise, k, hw=self._positions_hw(x, int(y.shape[1])))
        return self.finish(self._registers(out, k, ctx, lambda: xp, shared, c), x, shared)

    def _registers(self, out: Tensor, k: EpilogueOperands, ctx: ChipPass, xp: Callable[[], Prepared], shared: bool,
                   c: int) -> Tensor:
        """The per-chip additive registers and the sparse SRAM's contribution (M * W_sram[chip]) x (``xp``:
        the prepared digital inputs, made only when there is an SRAM) added to a read ``out`` (B, L, c, O)."""
        if k.extra is not None:
            out = out + k.extra.view(1, 1, c, -1)
        xb = self.crossbar
        if not xb.sram_w.numel() or ctx.chips is None:
            return out
        mask = xb.sram_mask[ctx.chips] if xb.sram_mask.dim() == 3 else xb.sram_mask  # per chip or shared
        w = (xb.sram_w[ctx.chips] * mask).reshape(c, 1, self.out_features, self.k)
        return out + self.mvm(xp(), self.pack(w, shared), shared, c, 1).sum(dim=(3, 4))

    def _packed(self, cache_of: Pass, shared: bool, chip: ChipPass | None) -> tuple[Tensor, Tensor | None]:
        """Packed (value, read-noise variance) weights: of ``chip``'s chips, or (None) the noise-free mapped
        targets; once per chip block (the pass's cache lives for one block), not once per image sub-batch."""
        key, xb = (id(self), shared), self.crossbar
        if key not in cache_of.cache and chip is not None and chip.block:  # the last block's, cells unchanged
            ident = (chip.block, shared, chip.var_dtype)
            memo = self._packed_memo
            if memo is not None and memo[0] == ident and xb.unchanged(memo[1]):
                cache_of.cache[key] = memo[2]
        if key not in cache_of.cache:
            wv = None
            if chip is not None:  # the programmed chips, with read noise
                self._packed_memo = None  # (not two blocks' weights at once)
                every = chip.block == tuple(range(xb.n_chips)) and not xb.on_demand
                w, w2 = xb.read(None if every else chip.chips)  # every chip in order: the buffers, no copy
                if w2 is not None:
                    wv = self.pack(w2, shared)
                    if chip.var_dtype is not None:
                        wv = wv.to(chip.var_dtype)  # keeps the (channels-last) layout
            else:  # calibration: the noise-free mapped targets
                w, _ = xb.conductances(*xb.nominal())
            cache_of.cache[key] = (self.pack(w, shared), wv)
            if chip is not None and chip.block:
                self._packed_memo = ((chip.block, shared, chip.var_dtype), xb.stamp(), cache_of.cache[key])
        return cache_of.cache[key]

    def _fused_tail(self, ctx: ChipPass, k: EpilogueOperands, x: Tensor) -> TailSpec | None:
        """(ops, H, W) when this pass may apply the layer's digital tail inside the compiled epilogue: a plain
        compiled chip run, with nothing added after the kernel and nobody hooked to the layer's own output."""
        if (self.tail is None or not ctx.compiled or torch.is_grad_enabled() or k.extra is not None
                or self.crossbar.sram_w.numel() or self._forward_hooks):
            return None
        return (self.tail.ops, *self._positions_hw(x, 0))

    def _positions_hw(self, x: Tensor, n_l: int) -> tuple[int, int]:
        """The ``n_l`` output positions of input ``x`` as (rows, columns): read-noise draws pair columns."""
        return 1, n_l

    def _operands(self, cache_of: Pass, c: int, y: Tensor, chip: ChipPass | None) -> EpilogueOperands:
        """ADC step and errors, output scale and registers of ``chip``'s chips (None: a calibration read,
        no ADC and no per-chip state): the same for every image sub-batch of a chip block, so computed once
        per block (when no gradient is being taken)."""
        key = (id(self), "operands", chip is None, c)
        if not torch.is_grad_enabled() and key in cache_of.cache:
            return cache_of.cache[key]
        gain = offset = delta = None
        lo = hi = 0
        cc, xb, adc_fs = self.config.circuit, self.crossbar, self.converters.adc_fs
        if cc.adc_bits and chip is not None:
            if not bool(adc_fs.any()):
                raise NvcimError("the ADC range is not calibrated: call model.calibrate(x) or set "
                                 "circuit.adc_range")
            adc = get_adc(cc.adc_key)
            delta = adc.step(adc_fs, cc.adc_bits).expand(self.row_tiles, self.n_slices, self.out_features)
            lo, hi = adc.codes(cc.adc_bits)
        if chip is not None and (cc.adc_gain_sigma or cc.adc_offset_sigma):
            gain = xb.adc_gain[chip.chips]
            offset = xb.adc_offset[chip.chips] * self.adc_full_scale()
        scale = xb.scale.view(1, -1).expand(c, -1)
        bias = self.bias if self.bias is not None else torch.zeros(self.out_features, device=y.device)
        extra = None
        if chip is not None:
            # drift compensation and the per-chip registers y -> gain (y + bias) + offset: the gain folds
            # into the scale; the per-chip additive part is added outside the fused kernel, and only when a
            # method has set it, because a (chip, column) operand inside made inductor's loop several
            # times slower (bisected with bench/bench_core.py). A (column,) bias is always passed for the
            # same reason.
            tg = xb.tune_gain[chip.chips]
            scale = scale * xb.drift_comp[chip.chips].view(-1, 1) * tg
            if xb.tune_offset.requires_grad or xb.tuned():
                extra = (bias.view(1, -1) * (tg - 1) + xb.tune_offset[chip.chips]).to(y)
        ops = EpilogueOperands(gain, offset, delta, lo, hi, xb.slice_w.to(y), scale.to(y), _plain(bias.to(y)),
                               extra, cc.adc_key)
        if not torch.is_grad_enabled():
            cache_of.cache[key] = ops
        return ops

    def adc_full_scale(self) -> Tensor:
        """The ADC full scale per (row tile, slice, column), in signal units: the calibrated range, or the
        largest possible tile signal where none is calibrated."""
        fs = self.converters.adc_fs if bool(self.converters.adc_fs.any()) else self.converters.signal_full_scale()
        return fs.expand(self.row_tiles, self.n_slices, self.out_features)

    def read_keys(self, ctx: ChipPass) -> tuple[Tensor, Tensor]:
        """Read-noise keys: (c,) per chip of this layer and (B,) per image; element keys mix the two."""
        cache = ctx.cache if not torch.is_grad_enabled() else {}
        # the n-th read of this layer within one forward (a recurrent cell at step n, a layer shared by
        # several branches) is a new read of the array: fresh noise, not the first read's draws again
        n = ctx.reads.get(id(self), 0)
        ctx.reads[id(self)] = n + 1
        if (id(self), "ck", n) not in cache:
            base = ctx.read_key ^ rng.key(self.layer_name) ^ (rng.key("read", n) if n else 0)
            cache[(id(self), "ck", n)] = rng.chip_keys(base, self.crossbar.chip_ids[ctx.chips].to(torch.int32))
        ck = cache[(id(self), "ck", n)]
        if ctx.image_keys is None:
            ids = ctx.image_ids if ctx.image_ids is not None else torch.arange(ctx.batch)
            ctx.image_keys = ids.to(ck.device, torch.int32) * 0x2545F491
        return ck, ctx.image_keys

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # saved before the crossbar owned the per-chip state: its buffers were the layer's own
        # and the converter ranges the layer's
        for part in (self.crossbar, self.converters):
            sub = "crossbar." if part is self.crossbar else "converters."
            for name in part._buffers:
                if prefix + name in state_dict and prefix + sub + name not in state_dict:
                    state_dict[prefix + sub + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
