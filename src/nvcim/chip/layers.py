"""Analog layers: ``nn.Module`` drop-ins that hold N programmed chips; :class:`AnalogLayer` is their forward
pass (the chip pass, calibration, noise-injection training and the digital model), on top of the cells
(:mod:`.cells`) and converters (:mod:`.converters`). The layer kinds live in files of their own
(:mod:`.linear`, :mod:`.conv2d`, ...) and register the module type they replace.

Activations of a chip block of ``c`` chips travel through the model as ``(B * c, ...)``, image major and
chip minor, from the model's entry on (:class:`~nvcim.chip.model.AnalogModel`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..circuits import get_adc, ste_round
from ..config.schema import ChipConfig
from ..errors import NvcimError, ShapeError
from ..mapping import get_mapping
from . import managed_io, rng
from .cells import CELLS
from .context import (
    CalibratePass,
    ChipPass,
    DigitalPass,
    EpilogueOperands,
    Prepared,
    ReadNoiseOperands,
    RunContext,
    TrainPass,
    _plain,
)
from .converters import Converters
from .kernel import TailSpec, epilogue
from .tail import Tail, mark


class AnalogLayer(Converters):
    """Shared machinery of analog layers; subclasses define the geometry and the matrix product."""

    channel_dim = 1  # where the output columns are in the digital output (convolutions: channels)

    def __init__(self, digital: nn.Module, config: ChipConfig, name: str) -> None:
        super().__init__()
        self.config, self.layer_name = config, name
        self.weight = digital.weight  # type: ignore[assignment]
        self.bias = digital.bias  # type: ignore[assignment]
        self.mapping = get_mapping(config)
        self.ctx: RunContext | None = None
        self.tail: Tail | None = None  # digital modules after this layer that its fused epilogue may apply
        self.seed = 0
        self._nominal: tuple[Tensor, Tensor] | None = None
        out, k = self.matrix_shape()
        self.out_features, self.k = out, k
        dev = self.weight.device  # the state lives where the weights are (CPU or GPU)
        for name_, t in self._empty_state().items():
            self.register_buffer(name_, t.to(dev))
        self.register_buffer("dac_fs", torch.zeros((), device=dev))
        self.register_buffer("dac_signed", torch.ones((), dtype=torch.bool, device=dev))
        self.register_buffer("adc_fs", torch.zeros((), device=dev))
        self.register_buffer("writes", torch.zeros((), dtype=torch.long, device=dev))  # re-programming calls

    # ---- forward --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return (f"{self.layer_name!r}, out={self.out_features}, K={self.k}, chips={self.n_chips}, "
                f"tiles={self.row_tiles}x{self.n_col_tiles}, slices={self.n_slices}")

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

    def sram_output(self, x: Prepared, ctx: ChipPass, shared: bool, c: int) -> Tensor | None:
        """Digital sparse-SRAM contribution (M * W_sram[chip]) x, shape (B, L, c, O), or None."""
        if not self.sram_w.numel() or ctx.chips is None:
            return None
        mask = self.sram_mask[ctx.chips] if self.sram_mask.dim() == 3 else self.sram_mask  # per chip or shared
        w = (self.sram_w[ctx.chips] * mask).reshape(c, 1, self.out_features, self.k)
        return self.mvm(x, self.pack(w, shared), shared, c, 1).sum(dim=(3, 4))

    def packed_weights(self, ctx: ChipPass | CalibratePass, shared: bool) -> tuple[Tensor, Tensor | None]:
        """Packed (value, read-noise variance) weights of this pass's chips, computed once per chip block
        (``ctx.cache`` lives for one block) rather than once per image sub-batch."""
        key = (id(self), shared)
        if key not in ctx.cache:
            wv = None
            if isinstance(ctx, ChipPass):  # the programmed chips, with read noise
                eff = self.effective(ctx.chips)  # (on demand: writes the block's cells, which programmed reads)
                w, w2 = self.conductances(*eff, at_t0=self.programmed(ctx.chips))
                if w2 is not None:
                    wv = self.pack(w2, shared)
                    if ctx.var_dtype is not None:
                        wv = wv.to(ctx.var_dtype)  # keeps the (channels-last) layout
            else:  # calibration: the noise-free mapped targets
                w, _ = self.conductances(*self.nominal())
            ctx.cache[key] = (self.pack(w, shared), wv)
        return ctx.cache[key]

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        """(B, L, c, O) -> the activation layout (B * c, ...)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.ctx
        self.check_input(x)
        if ctx is None or isinstance(ctx, DigitalPass):
            return self.digital(x)
        if isinstance(ctx, TrainPass):
            return self._train_forward(x, ctx)
        b = ctx.batch
        if isinstance(ctx, CalibratePass):
            c, shared = 1, True
            if x.shape[0] != b:
                raise ShapeError(f"{self.layer_name}: batch {x.shape[0]} != {b}")
        else:
            assert ctx.chips is not None
            c = int(ctx.chips.numel())
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
        again = False
        if isinstance(ctx, CalibratePass):
            # a layer read several times in one forward (a recurrent cell) takes the widest range of them
            again = ctx.reads.get(id(self), 0) > 0
            ctx.reads[id(self)] = ctx.reads.get(id(self), 0) + 1
            if ctx.inputs or not self.is_calibrated():
                self._calibrate_input(x, again)
        if self.config.circuit.managed_io:
            return self._managed_forward(x, shared, c, ctx, again)
        x = self.pad_input(x)
        compiled = isinstance(ctx, ChipPass) and ctx.compiled
        xp = self.prepare(self.apply_dac(x, compiled), shared, c)
        wy, wv = self.packed_weights(ctx, shared)
        y = self.mvm(xp, wy, shared, c)
        if isinstance(ctx, CalibratePass):
            self._calibrate_output(y, again)
        noise = None
        if wv is not None and isinstance(ctx, ChipPass):  # read noise: chip passes only
            noise = ReadNoiseOperands(self.mvm(xp.squared(ctx.var_dtype), wv, shared, c), *self._read_keys(ctx))
        k = self._epilogue_operands(ctx, c, y)
        tail = self._fused_tail(ctx, k, x)
        if tail is not None and self.tail is not None:
            out = epilogue(compiled)(y, noise, k, tail=tail)  # (B, c, H', W', O)
            n, _, ho, wo, o = out.shape
            return mark(out.view(n * c, ho, wo, o).permute(0, 3, 1, 2), self.tail)
        out = epilogue(compiled)(y, noise, k, hw=self._positions_hw(x, int(y.shape[1])))
        if k.extra is not None:
            out = out + k.extra.view(1, 1, c, -1)
        if isinstance(ctx, ChipPass):
            extra = self.sram_output(xp, ctx, shared, c)
            if extra is not None:
                out = out + extra
        return self.finish(out, x, shared)

    def _managed_forward(self, x: Tensor, shared: bool, c: int, ctx: ChipPass | CalibratePass, again: bool
                         ) -> Tensor:
        """A read with per-input-vector I/O management (:mod:`.managed_io`), for the same layout."""
        k = self._epilogue_operands(ctx, c, x)
        out, signals = managed_io.read(self, x, shared, c, ctx, k)
        if signals is not None:
            self._calibrate_output(signals, again)
        if k.extra is not None:
            out = out + k.extra.view(1, 1, c, -1)
        if isinstance(ctx, ChipPass):
            x_dig = x if self.config.circuit.input_scaling == "absmax" else self.apply_dac(x)
            extra = self.sram_output(self.prepare(self.pad_input(x_dig), shared, c), ctx, shared, c)
            if extra is not None:
                out = out + extra
        return self.finish(out, self.pad_input(x), shared)

    def _fused_tail(self, ctx: ChipPass | CalibratePass, k: EpilogueOperands, x: Tensor
                    ) -> TailSpec | None:
        """(ops, H, W) when this pass may apply the layer's digital tail inside the compiled epilogue: a plain
        chip run, with nothing added after the kernel and nobody hooked to the layer's own output."""
        if (self.tail is None or not isinstance(ctx, ChipPass) or not ctx.compiled or torch.is_grad_enabled()
                or k.extra is not None or self.sram_w.numel() or self._forward_hooks):
            return None
        return (self.tail.ops, *self._positions_hw(x, 0))

    def _positions_hw(self, x: Tensor, n_l: int) -> tuple[int, int]:
        """The ``n_l`` output positions of input ``x`` as (rows, columns): read-noise draws pair columns."""
        return 1, n_l

    def _epilogue_operands(self, ctx: ChipPass | CalibratePass, c: int, y: Tensor) -> EpilogueOperands:
        """ADC step and errors, output scale and registers of this pass's chips: the same for every image
        sub-batch of a chip block, so computed once per block (when no gradient is being taken)."""
        key = (id(self), "operands", type(ctx).__name__, c)
        if not torch.is_grad_enabled() and key in ctx.cache:
            return ctx.cache[key]
        gain = offset = delta = None
        lo = hi = 0
        cc = self.config.circuit
        if cc.adc_bits and not isinstance(ctx, CalibratePass):
            if not bool(self.adc_fs.any()):
                raise NvcimError("the ADC range is not calibrated: call model.calibrate(x) or set "
                                 "circuit.adc_range")
            adc = get_adc(cc.adc_model)
            delta = adc.step(self.adc_fs, cc.adc_bits).expand(self.row_tiles, self.n_slices, self.out_features)
            lo, hi = adc.codes(cc.adc_bits)
        if isinstance(ctx, ChipPass) and (cc.adc_gain_sigma or cc.adc_offset_sigma):
            gain = self.adc_gain[ctx.chips]
            offset = self.adc_offset[ctx.chips] * self._adc_range_for_offset()
        scale = self.scale.view(1, -1).expand(c, -1)
        bias = self.bias if self.bias is not None else torch.zeros(self.out_features, device=y.device)
        extra = None
        if isinstance(ctx, ChipPass):
            # drift compensation and the per-chip registers y -> gain (y + bias) + offset: the gain folds
            # into the scale; the per-chip additive part is added outside the fused kernel, and only when a
            # method has set it, because a (chip, column) operand inside made inductor's loop several
            # times slower (bisected with bench/bench_core.py). A (column,) bias is always passed for the
            # same reason.
            tg = self.tune_gain[ctx.chips]
            scale = scale * self.drift_comp[ctx.chips].view(-1, 1) * tg
            if self.tune_offset.requires_grad or bool((self.tune_offset != 0).any() or (self.tune_gain != 1).any()):
                extra = (bias.view(1, -1) * (tg - 1) + self.tune_offset[ctx.chips]).to(y)
        ops = EpilogueOperands(gain, offset, delta, lo, hi, self.slice_w.to(y), scale.to(y), _plain(bias.to(y)),
                               extra, cc.adc_model)
        if not torch.is_grad_enabled():
            ctx.cache[key] = ops
        return ops

    def _train_forward(self, x: Tensor, ctx: TrainPass) -> Tensor:
        """Noise-injection training: the forward pass sees a freshly drawn chip's weights (and quantised
        inputs), the backward pass treats them as the ideal weights (straight-through)."""
        if self.layer_name in ctx.act_quant:
            step, bits, signed = ctx.act_quant[self.layer_name]
            lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            x = torch.clamp(ste_round(x / step), lo, hi) * step  # learned step size (LSQ-style)
        elif self.config.circuit.dac_bits and bool(self.dac_fs > 0):
            x = self.apply_dac(x)
        fresh, column_scale = self.fresh_chip(ctx.train_chip, ctx.censor)
        w = self.weight + (fresh - self.weight).detach()
        if ctx.adc and self.config.circuit.adc_bits and self.n_slices == 1 and bool(self.adc_fs.any()):
            return self._tiles_through_adc(x, w, column_scale.to(w))
        return self.digital_with(x, w)

    def _tiles_through_adc(self, x: Tensor, w: Tensor, col: Tensor) -> Tensor:
        """The layer as a chip reads it with weights ``w``: one product per array tile (the rows of tile t
        only), each digitised by the calibrated ADC in conductance units (``col``: (O,) weight units per
        conductance unit), summed digitally, plus the bias. The ADC's rounding passes gradients straight
        through, so training learns weights whose partial sums survive the converter. One cell per weight
        only (sliced weights would need a product per slice too)."""
        cc = self.config.circuit
        adc = get_adc(cc.adc_model)
        lo, hi = adc.codes(cc.adc_bits)
        delta = adc.step(self.adc_fs, cc.adc_bits).to(w).expand(self.row_tiles, self.n_slices, self.out_features)
        tiles = self.row_tile_index().to(w.device)
        wm = self.as_matrix(w)
        out: Tensor | None = None
        for t in range(self.row_tiles):
            y = self.digital_with(x, self.from_matrix(wm * (tiles == t)))
            if self.bias is not None:
                y = y - self._per_column(self.bias, y)
            c = self._per_column(col, y)
            q = adc.quantize(y / c, self._per_column(delta[t, 0], y), lo, hi) * c
            out = q if out is None else out + q
        assert out is not None
        return out + self._per_column(self.bias, out) if self.bias is not None else out

    def _per_column(self, v: Tensor, y: Tensor) -> Tensor:
        """An (O,) vector shaped to broadcast over the output columns of a digital output ``y``: the last
        dimension (Linear) or dimension 1 (convolutions)."""
        if self.channel_dim == -1:
            return v
        return v.view(-1, *([1] * (y.dim() - 2)))

    def _adc_range_for_offset(self) -> Tensor:
        fs = self.adc_fs if bool(self.adc_fs.any()) else self._signal_full_scale()
        return fs.expand(self.row_tiles, self.n_slices, self.out_features)

    def _read_keys(self, ctx: ChipPass) -> tuple[Tensor, Tensor]:
        """Read-noise keys: (c,) per chip of this layer and (B,) per image; element keys mix the two."""
        cache = ctx.cache if not torch.is_grad_enabled() else {}
        # the n-th read of this layer within one forward (a recurrent cell at step n, a layer shared by
        # several branches) is a new read of the array: fresh noise, not the first read's draws again
        n = ctx.reads.get(id(self), 0)
        ctx.reads[id(self)] = n + 1
        if (id(self), "ck", n) not in cache:
            base = ctx.read_key ^ rng.key(self.layer_name) ^ (rng.key("read", n) if n else 0)
            cache[(id(self), "ck", n)] = rng.chip_keys(base, self.chip_ids[ctx.chips].to(torch.int32))
        ck = cache[(id(self), "ck", n)]
        if ctx.image_keys is None:
            ids = ctx.image_ids if ctx.image_ids is not None else torch.arange(ctx.batch)
            ctx.image_keys = ids.to(ck.device, torch.int32) * 0x2545F491
        return ck, ctx.image_keys

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Buffers change shape when chips are programmed: take the saved shapes before the copy.
        if prefix + "row_perm" not in state_dict and prefix + "g_pos" in state_dict:  # saved before remapping
            g = state_dict[prefix + "g_pos"]
            state_dict[prefix + "row_perm"] = torch.arange(g.shape[-1]).expand(g.shape[0], -1).clone()
        for name in list(self._buffers):
            key = prefix + name
            if key in state_dict and self._buffers[name] is not None:
                self._buffers[name] = torch.empty_like(state_dict[key], device=self._buffers[name].device)
        self._nominal = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        ids, g = state_dict.get(prefix + "chip_ids"), state_dict.get(prefix + "g_pos")
        if ids is not None and g is not None:  # programmed chips without cells: saved with cells on demand
            self.on_demand, self._resident, self._source = ids.numel() > 0 and g.numel() == 0, None, None

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.on_demand:  # the buffers hold one block's cells: save none, they are made again on load
            for name in CELLS:
                destination[prefix + name] = torch.zeros(0, dtype=getattr(self, name).dtype)
