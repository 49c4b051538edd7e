"""Analog layers: ``nn.Module`` drop-ins for Linear and Conv2d that hold N programmed chips.

Each layer keeps the ideal weights (``weight``, ``bias``, trainable Parameters) and, as buffers, the
programmed conductances of every chip along a leading chip dimension: ``g_pos``/``g_neg`` of shape
``(N, S, out, K)`` (``g_neg`` is ``(N, S, n_col_tiles, K)`` for reference columns), their stuck-at fault
codes, ADC gain/offset errors and drift compensation. Everything is in ``state_dict``.

Activations of a chip chunk of ``c`` chips travel through the model flattened as ``(B * c, ...)``, image
major and chip minor, so that ordinary layers (ReLU, pooling, BatchNorm in eval mode, reshapes) work
unchanged. The first analog layer sees the shared ``(B, ...)`` input and computes all chips from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..circuits import adc_codes, attenuation, dac, ste_round
from ..config.schema import ChipConfig
from ..devices import apply_faults, drift, fault_codes, get_model, round_to_levels
from ..errors import ConversionError, NvcimError, ShapeError
from ..mapping import Mapped, get_mapping
from . import rng
from .kernel import TailSpec, dac_kernel, epilogue
from .registry import register
from .tail import Tail, mark


def _plain(t: Tensor) -> Tensor:
    """A Parameter as a plain tensor (detached under no_grad): the compiled epilogue guards on the type
    and on requires_grad, and recompiles for each mismatch (hitting dynamo's recompile limit on a ResNet)."""
    return t.view(-1) if torch.is_grad_enabled() else t.detach().view(-1)


def contiguous_rows(t: Tensor) -> Tensor:
    """``t.contiguous()`` for a permuted tensor whose last dimension is still innermost. Pairs of float32
    move as one float64 where strides allow: PyTorch's strided copy costs per element, and these copies
    gather short rows (6 filters of a first convolution: about 1.5x faster)."""
    if (t.dtype == torch.float32 and t.shape[-1] % 2 == 0 and t.stride(-1) == 1 and t.storage_offset() % 2 == 0
            and all(st % 2 == 0 for st, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1)):
        # Tensor.view(dtype) checks the stride of every dimension, size-1 ones included (a 1x1 feature map
        # of a ResNet gives odd ones); their stride is never used, so it is set to 0 first.
        t = t.as_strided(t.shape, [st if n > 1 else 0 for st, n in zip(t.stride(), t.shape)], t.storage_offset())
        return t.view(torch.float64).contiguous().view(torch.float32)
    return t.contiguous()


@dataclass(frozen=True)
class Prepared:
    """A layer input laid out for :meth:`AnalogLayer.mvm`: ``x``, B images, and L positions (Linear)."""

    x: Tensor
    n: int
    n_l: int

    def squared(self, dtype: torch.dtype | None = None) -> Prepared:
        """x * x (stored as ``dtype``, default x's), in x's memory layout (elementwise ops may pick another
        one for ambiguous strides, and a variance in another layout than the value makes the epilogue
        stride across memory)."""
        x = self.x
        if torch.is_grad_enabled() and x.requires_grad:  # out= has no autograd
            sq = x * x
            if sq.stride() != x.stride() or (dtype is not None and dtype != sq.dtype):
                sq = torch.empty_strided(x.shape, x.stride(), dtype=dtype or sq.dtype, device=sq.device).copy_(sq)
        else:
            sq = torch.mul(x, x, out=torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device))
            if dtype is not None and dtype != sq.dtype:
                sq = sq.to(dtype)  # keeps the strides; a mixed-dtype out= above would be 10x slower
        return Prepared(sq, self.n, self.n_l)


@dataclass(frozen=True)
class EpilogueOperands:
    """Per-block operands of the analog epilogue (see :func:`~nvcim.chip.kernel.analog_epilogue`)."""

    gain: Tensor | None
    offset: Tensor | None
    delta: Tensor | None
    lo: int
    hi: int
    slice_w: Tensor
    scale: Tensor
    bias: Tensor
    extra: Tensor | None  # (c, O) per-chip additive register part, added after the kernel


@dataclass
class RunContext:
    """What the enclosing :class:`~nvcim.chip.model.AnalogModel` tells its layers for one forward pass."""

    mode: str  # "chip", "digital", "train" (fresh noisy chip, straight-through), "nominal" or "calibrate"
    chips: Tensor | None = None  # (c,) indices into the chip dimension of this pass
    batch: int = 0
    image_ids: Tensor | None = None  # (B,) global image indices, keys of the read noise
    read_key: int = 0
    compiled: bool = False
    cache: dict = field(default_factory=dict)  # per chip block: packed weights of each layer
    train_chip: int = 0  # "train" mode: id of the fresh chip drawn for this step
    censor: float = 0.0  # "train" mode: right-censor programming draws at this many sigma (0 = off)
    act_quant: dict = field(default_factory=dict)  # "train" mode: layer name -> (step Parameter, bits, signed)
    image_keys: Tensor | None = None  # (B,) int32 keys derived from image_ids (set by the first layer)
    var_dtype: torch.dtype | None = None  # "chip" mode: dtype of the read-noise variance products (None: as y)
    # "chip" mode: the model's input as every chip sees it, (B c, ...) image-major (``entry``), made from the
    # shared (B, ...) batch ``entry_src``; a layer whose input is still that very tensor, unmodified, may
    # compute all chips from ``entry_src`` (the same numbers, fewer products)
    entry: Tensor | None = None
    entry_src: Tensor | None = None
    entry_version: int = 0
    ran: set[int] = field(default_factory=set)  # "chip" mode: ids of the analog layers that ran
    reads: dict[int, int] = field(default_factory=dict)  # "chip" mode: reads of each layer in this forward


class AnalogLayer(nn.Module):
    """Shared machinery of analog layers; subclasses define the geometry and the matrix product."""

    weight: Tensor
    bias: Tensor | None
    dac_fs: Tensor
    dac_signed: Tensor
    adc_fs: Tensor
    writes: Tensor
    g_pos: Tensor
    g_neg: Tensor
    faults_pos: Tensor
    faults_neg: Tensor
    drift_pos: Tensor
    drift_neg: Tensor
    adc_gain: Tensor
    adc_offset: Tensor
    drift_comp: Tensor
    scale: Tensor
    slice_w: Tensor
    chip_ids: Tensor
    tune_gain: Tensor
    tune_offset: Tensor
    sram_mask: Tensor
    row_perm: Tensor  # (N, K): physical row of each logical row (identity unless rows were remapped)
    sram_w: Tensor

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

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def row_tiles(self) -> int:
        """Number of row tiles T (partial sums digitised separately)."""
        raise NotImplementedError

    def row_tile_index(self) -> Tensor:
        """Row tile of each of the K weight rows, shape (K,)."""
        raise NotImplementedError

    def rows_per_tile(self) -> int:
        """Rows used in each row tile. Rows are spread evenly over the T tiles a layer needs (400 rows on
        128-row arrays: 4 x 100, not 3 x 128 + 16): no tile idles, and none of the matrix product is
        spent on padding."""
        raise NotImplementedError

    @property
    def n_col_tiles(self) -> int:
        return math.ceil(self.out_features / self.config.array.cols)

    @property
    def n_slices(self) -> int:
        return int(self.slice_w.numel()) if self.slice_w.numel() else 1

    @property
    def n_chips(self) -> int:
        return int(self.g_pos.shape[0])

    def _empty_state(self) -> dict[str, Tensor]:
        z = torch.zeros(0)
        return dict(g_pos=z, g_neg=z, faults_pos=z.to(torch.int8), faults_neg=z.to(torch.int8),
                    drift_pos=z, drift_neg=z, adc_gain=z, adc_offset=z, drift_comp=z, scale=z, slice_w=z,
                    chip_ids=z.long(), tune_gain=z, tune_offset=z, sram_mask=z.bool(), sram_w=z,
                    row_perm=z.long())

    # ---- programming ----------------------------------------------------------------------------
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

    def w2d(self) -> Tensor:
        return self.as_matrix(self.weight.detach()).float().cpu()

    def mapped(self) -> Mapped:
        return self.mapping.map(self.w2d())

    def program(self, seed: int, chip_ids: Tensor, chunk: int = 64) -> None:
        """Program all chips ``chip_ids`` (global ids): noisy writes, faults, drift; fills the buffers.

        ``g_pos``/``g_neg`` hold the conductances right after programming (time t0, faults applied);
        ``drift_pos``/``drift_neg`` the per-cell factors (t_read/t0)^-nu that reads apply (empty: no drift).
        """
        cfg, d = self.config, self.config.device
        dev = self.weight.device
        m = self.mapped()
        self.seed = seed
        self.scale, self.slice_w = m.scale.to(dev), m.slice_weights.to(dev)
        n = len(chip_ids)
        if tuple(self.row_perm.shape) != (n, self.k):  # a fresh chip: logical row k on physical row k
            self.row_perm = torch.arange(self.k, device=dev).expand(n, -1).clone()
        perm = self.row_perm.cpu()
        self.chip_ids = chip_ids.to(dev)
        self._nominal = None
        has_drift = self._has_drift()
        out: dict[str, list[Tensor]] = {k: [] for k in ("pos", "neg", "fpos", "fneg", "dpos", "dneg", "comp")}
        for start in range(0, len(chip_ids), chunk):
            ids = chip_ids[start:start + chunk]
            g0, gt = {}, {}
            for side, target in (("pos", m.pos), ("neg", m.neg)):
                shape = tuple(target.shape)
                # faults and drift exponents belong to physical cells: drawn in physical order, then seen
                # through the row routing (identity unless map-correct moved rows)
                rows = perm[start:start + chunk].view(len(ids), *([1] * (len(shape) - 1)), -1).expand(
                    len(ids), *shape)
                codes = fault_codes(rng.draw("uniform", rng.key(seed, self.layer_name, side, "fault"), ids,
                                             shape), d).gather(-1, rows)
                # the whole draw stays on the CPU (as do the counter-based draws) and moves once, below
                g0[side] = apply_faults(self._sample(side, ids, "program", on_cpu=True), codes, d)
                factor = torch.ones(0)
                if has_drift:
                    z_nu = rng.draw("normal", rng.key(seed, self.layer_name, side, "drift"), ids,
                                    shape).gather(-1, rows)
                    factor = drift(torch.ones_like(z_nu), z_nu, d).masked_fill(codes != 0, 1.0)
                gt[side] = g0[side] * factor if has_drift else g0[side]
                out[side].append(g0[side])
                out["f" + side].append(codes)
                out["d" + side].append(factor)
            out["comp"].append(self._drift_compensation(m, g0, gt))
        self.g_pos, self.g_neg = torch.cat(out["pos"]).to(dev), torch.cat(out["neg"]).to(dev)
        self.faults_pos, self.faults_neg = torch.cat(out["fpos"]).to(dev), torch.cat(out["fneg"]).to(dev)
        self.drift_pos, self.drift_neg = torch.cat(out["dpos"]).to(dev), torch.cat(out["dneg"]).to(dev)
        self.drift_comp = torch.cat(out["comp"]).to(dev)
        shape = (self.row_tiles, self.n_slices, self.out_features)
        c = cfg.circuit
        self.adc_gain = (1.0 + c.adc_gain_sigma * rng.draw(
            "normal", rng.key(seed, self.layer_name, "adc-gain"), chip_ids, shape)).to(dev)
        self.adc_offset = (c.adc_offset_sigma * rng.draw(
            "normal", rng.key(seed, self.layer_name, "adc-offset"), chip_ids, shape)).to(dev)
        self.tune_gain = torch.ones(n, self.out_features, device=dev)
        self.tune_offset = torch.zeros(n, self.out_features, device=dev)

    def _has_drift(self) -> bool:
        d = self.config.device.drift
        return d.t_read != d.t0 and (d.nu_mean > 0 or d.nu_std > 0)

    def _sample(self, side: str, ids: Tensor, purpose: str | tuple[str, int], censor: float = 0.0,
                target: Tensor | None = None, on_cpu: bool = False, mapped: Mapped | None = None,
                stream: bool = False) -> Tensor:
        """One programming write of every cell of ``side`` on chips ``ids`` (fresh draws per purpose), to
        the mapped targets or to per-chip ``target`` conductances (N, S, O', K). The result is on the
        layer's device (on the CPU with ``on_cpu``). ``mapped``: the mapping if the caller has it;
        ``stream``: a training chip (one id), drawn with the fast generator."""
        cfg = self.config
        m = mapped if mapped is not None else self.mapped()
        model = get_model(cfg.device, cfg.variability)
        if target is None:
            target = (m.pos if side == "pos" else m.neg).unsqueeze(0)
        g_t, lvl = round_to_levels(target.cpu().clamp(cfg.device.g_min, cfg.device.g_max), model.levels())
        shape = tuple(target.shape[1:])
        tag = purpose if isinstance(purpose, str) else f"{purpose[0]}-{purpose[1]}"
        if stream:
            z_cell = rng.draw_stream("normal", rng.key(self.seed, self.layer_name, side, tag), int(ids[0]), shape)
        else:
            z_cell = rng.draw("normal", rng.key(self.seed, self.layer_name, side, tag), ids, shape)
        z_chip = self._between(self.seed, ids, shape, side == "neg" and m.reference)
        if censor:
            z_cell, z_chip = z_cell.clamp(-censor, censor), z_chip.clamp(-censor, censor)
        g = model.sample(g_t, lvl, z_cell, z_chip)
        return g if on_cpu else g.to(self.weight.device)

    def rewrite(self, side: str, mask: Tensor, target: Tensor | None = None) -> Tensor:
        """Re-program the cells of ``side`` where ``mask`` (N, S, O', K) is true with a fresh noisy write,
        to the mapped targets or to ``target`` (N, S, O', K). Stuck cells do not change. Every call draws
        anew (a per-layer write counter keys it). Returns the pulses spent per chip."""
        g = self.g_pos if side == "pos" else self.g_neg
        codes = self.faults_pos if side == "pos" else self.faults_neg
        live = mask & (codes == 0)
        self.writes += 1
        new = self._sample(side, self.chip_ids.cpu(), ("rewrite", int(self.writes)), target=target)
        g = torch.where(live, new, g)
        if side == "pos":
            self.g_pos = g
        else:
            self.g_neg = g
        if self.drift_pos.numel():
            g0 = {"pos": self.g_pos, "neg": self.g_neg}
            now = dict(zip(("pos", "neg"), self.effective()))
            self.drift_comp = self._drift_compensation(self.mapped(), g0, now).to(g)
        return live.flatten(1).sum(1)

    @torch.no_grad()
    def remap_rows(self, perm: Tensor) -> Tensor:
        """Route logical row k of chip n to physical row ``perm[n, k]`` (a permutation within each row tile,
        as the input driver's routing would do). The cells keep their physical state: a moved row now sees
        the conductances, faults and drift of its new cells (re-program them afterwards). Returns the
        number of moved rows per chip."""
        n = self.n_chips
        if tuple(perm.shape) != (n, self.k):
            raise NvcimError(f"{self.layer_name}: row permutation must have shape ({n}, {self.k})")
        perm = perm.to(self.row_perm.device).long()
        tiles = self.row_tile_index().to(perm.device)
        ok = (perm.sort(-1).values == torch.arange(self.k, device=perm.device)).all() and bool(
            (tiles[perm] == tiles.view(1, -1)).all())
        if not ok:
            raise NvcimError(f"{self.layer_name}: a row permutation must reorder rows within their tiles")
        inv_old = torch.empty_like(self.row_perm).scatter_(
            -1, self.row_perm, torch.arange(self.k, device=perm.device).expand(n, -1).contiguous())
        idx = inv_old.gather(-1, perm)  # logical row now at perm[k] held it before: take its state
        for name in ("g_pos", "g_neg", "faults_pos", "faults_neg", "drift_pos", "drift_neg"):
            t = getattr(self, name)
            if t.numel():
                setattr(self, name, t.gather(-1, idx.view(n, *([1] * (t.dim() - 2)), -1).expand_as(t)))
        moved = (perm != self.row_perm).sum(-1)
        self.row_perm = perm
        if self.drift_pos.numel():
            g0 = {"pos": self.g_pos, "neg": self.g_neg}
            now = dict(zip(("pos", "neg"), self.effective()))
            self.drift_comp = self._drift_compensation(self.mapped(), g0, now).to(self.g_pos)
        return moved.cpu()

    @torch.no_grad()
    def fresh_weights(self, chip_id: int, censor: float = 0.0) -> Tensor:
        """Effective weights (shape of ``weight``) of a newly drawn chip ``chip_id`` programmed with the
        current weights: levels, programming variation, faults, drift (and its compensation), IR drop.
        Training draws one per step: it maps the weights once and uses the fast generator
        (:func:`rng.draw_stream`) for its per-cell draws."""
        d = self.config.device
        ids = torch.tensor([chip_id])
        m = self.mapped()
        has_drift = self._has_drift()
        g0, gt = {}, {}
        for side, target in (("pos", m.pos), ("neg", m.neg)):
            shape = tuple(target.shape)
            codes = fault_codes(rng.draw_stream("uniform", rng.key(self.seed, self.layer_name, side, "fault"),
                                                chip_id, shape), d)
            g = self._sample(side, ids, "program", censor, on_cpu=True, mapped=m, stream=True)
            g0[side] = apply_faults(g, codes, d)
            if has_drift:
                z_nu = rng.draw_stream("normal", rng.key(self.seed, self.layer_name, side, "drift"), chip_id,
                                       shape)
                gt[side] = apply_faults(drift(g0[side], z_nu, d), codes, d)
            else:
                gt[side] = g0[side]
        comp = self._drift_compensation(m, g0, gt)  # all on the CPU so far
        dev = self.weight.device
        w, _ = self.conductances(gt["pos"].to(dev), gt["neg"].to(dev))  # (1, S, O, K)
        comp = comp.to(w)
        return self.from_matrix(self.decode(w)[0] * comp)

    def decode(self, diff: Tensor) -> Tensor:
        """Weights (..., O, K) that conductance differences (..., S, O, K) stand for: shift-and-add over
        slices, times the column scale (what the digital periphery does)."""
        sw = self.slice_w.to(diff).view(-1, 1, 1)
        return (diff * sw).sum(-3) * self.scale.to(diff).view(-1, 1)

    def effective(self, chips: Tensor | slice | None = None) -> tuple[Tensor, Tensor]:
        """Conductances (S) the array holds at read time (after drift) for ``chips`` (default all)."""
        sel = slice(None) if chips is None else chips
        pos, neg = self.g_pos[sel], self.g_neg[sel]
        if self.drift_pos.numel():
            pos, neg = pos * self.drift_pos[sel], neg * self.drift_neg[sel]
        return pos, neg

    def _between(self, seed: int, ids: Tensor, shape: tuple[int, ...], reference: bool) -> Tensor:
        """Between-chip draws, shared by a whole chip (all layers) or by one array (tile)."""
        if self.config.variability.between_sigma == 0:
            return torch.zeros(1)
        if self.config.variability.scope == "chip":
            return rng.draw("normal", rng.key(seed, "between-chip"), ids, (1,)).view(-1, 1, 1, 1)
        n_rt = self.row_tiles
        tiles = rng.draw("normal", rng.key(seed, self.layer_name, "between-array"), ids, (n_rt, self.n_col_tiles))
        col_tile = torch.arange(shape[1]) if reference else torch.arange(shape[1]) // self.config.array.cols
        return tiles[:, self.row_tile_index()][:, :, col_tile].transpose(1, 2).unsqueeze(1)

    def _drift_compensation(self, m: Mapped, at_t0: dict[str, Tensor], now: dict[str, Tensor]) -> Tensor:
        """Per-chip factor sum|I_ref(t0)| / sum|I_ref(t_read)| for an all-ones reference input."""
        if not self.config.device.drift.compensate:
            return torch.ones(at_t0["pos"].shape[0])

        def ref_current(g: dict[str, Tensor]) -> Tensor:
            diff = g["pos"] - m.expand_neg(g["neg"])
            return diff.sum(-1).abs().sum(dim=(1, 2))

        return ref_current(at_t0) / ref_current(now).clamp_min(1e-30)

    # ---- the weights the matrix product uses ----------------------------------------------------
    def nominal(self) -> tuple[Tensor, Tensor]:
        """Noise-free programmed targets (rounded to levels), shape (1, S, O, K) each."""
        if self._nominal is None:
            m = self.mapped()
            levels = get_model(self.config.device, self.config.variability).levels()
            dev = self.weight.device
            self._nominal = (round_to_levels(m.pos, levels)[0][None].to(dev),
                             round_to_levels(m.neg, levels)[0][None].to(dev))
        return self._nominal

    def conductances(self, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor | None]:
        """(G+ - G-) as the array sees it, with IR drop, and the read-noise variance weights.

        Reference columns are broadcast to their tile's columns; IR drop is applied to the weight cells
        (the two halves of a differential pair each as their own tile), not to reference columns.
        """
        r = self.config.array.wire_resistance
        if r:
            pos = pos * self._ir(pos, r)
        if self.config.mapping.scheme == "offset":
            neg = self._expand_ref(neg)
        elif r:
            neg = neg * self._ir(neg, r)
        sr = self.config.device.read_noise
        w2 = (sr * sr) * (pos * pos + neg * neg) if sr else None
        return pos - neg, w2

    def _expand_ref(self, neg: Tensor) -> Tensor:
        """Reference-column cells broadcast to the columns of their tile (``Mapped.expand_neg`` for state
        tensors with a leading chip dimension)."""
        tile = torch.arange(self.out_features, device=neg.device) // self.config.array.cols
        return neg.index_select(-2, tile)

    def _ir(self, g: Tensor, r: float) -> Tensor:
        """IR-drop attenuation of every cell, tile by tile (rows = K, columns = outputs)."""
        rows, cols = self.rows_per_tile(), self.config.array.cols
        t, n_ct = self.row_tiles, self.n_col_tiles
        lead = g.shape[:-2]
        phys = self._to_tile_rows(g)  # (..., O, T, R)
        phys = F.pad(phys, (0, 0, 0, 0, 0, n_ct * cols - self.out_features))
        phys = phys.reshape(*lead, n_ct, cols, t, rows).permute(*range(len(lead)), -2, -4, -1, -3)
        att = attenuation(phys, r, self.config.array.ir_activity)  # (..., T, n_ct, R, C)
        att = att.permute(*range(len(lead)), -3, -1, -4, -2).reshape(*lead, n_ct * cols, t, rows)
        return self._from_tile_rows(att[..., : self.out_features, :, :])

    def _to_tile_rows(self, g: Tensor) -> Tensor:
        """(..., O, K) -> (..., O, T, R) with zero padding (rows of tile t are contiguous in K)."""
        r, t = self.rows_per_tile(), self.row_tiles
        return F.pad(g, (0, t * r - self.k)).reshape(*g.shape[:-1], t, r)

    def _from_tile_rows(self, g: Tensor) -> Tensor:
        """Inverse of :meth:`_to_tile_rows`."""
        return g.reshape(*g.shape[:-2], -1)[..., : self.k]

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

    def sram_output(self, x: Prepared, ctx: RunContext, shared: bool, c: int) -> Tensor | None:
        """Digital sparse-SRAM contribution (M * W_sram[chip]) x, shape (B, L, c, O), or None."""
        if not self.sram_w.numel() or ctx.chips is None:
            return None
        mask = self.sram_mask[ctx.chips] if self.sram_mask.dim() == 3 else self.sram_mask  # per chip or shared
        w = (self.sram_w[ctx.chips] * mask).reshape(c, 1, self.out_features, self.k)
        return self.mvm(x, self.pack(w, shared), shared, c, 1).sum(dim=(3, 4))

    def packed_weights(self, ctx: RunContext, shared: bool) -> tuple[Tensor, Tensor | None]:
        """Packed (value, read-noise variance) weights of this pass's chips, computed once per chip block
        (``ctx.cache`` lives for one block) rather than once per image sub-batch."""
        key = (id(self), shared)
        if key not in ctx.cache:
            if ctx.mode in ("nominal", "calibrate"):
                pos, neg = self.nominal()
            else:
                pos, neg = self.effective(ctx.chips)
            w, w2 = self.conductances(pos, neg)
            noisy = w2 is not None and ctx.mode == "chip"
            wv = self.pack(w2, shared) if noisy and w2 is not None else None
            if wv is not None and ctx.var_dtype is not None:
                wv = wv.to(ctx.var_dtype)  # keeps the (channels-last) layout
            ctx.cache[key] = (self.pack(w, shared), wv)
        return ctx.cache[key]

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        """(B, L, c, O) -> the activation layout (B * c, ...)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.ctx
        self.check_input(x)
        if ctx is None or ctx.mode == "digital":
            return self.digital(x)
        if ctx.mode == "train":
            return self._train_forward(x, ctx)
        b = ctx.batch
        if ctx.mode in ("nominal", "calibrate"):
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
        if ctx.mode == "calibrate":
            # a layer read several times in one forward (a recurrent cell) takes the widest range of them
            again = ctx.reads.get(id(self), 0) > 0
            ctx.reads[id(self)] = ctx.reads.get(id(self), 0) + 1
            self._calibrate_input(x, again)
        x = self.pad_input(x)
        xp = self.prepare(self.apply_dac(x, ctx.compiled and ctx.mode == "chip"), shared, c)
        wy, wv = self.packed_weights(ctx, shared)
        y = self.mvm(xp, wy, shared, c)
        if ctx.mode == "calibrate":
            self._calibrate_output(y, again)
        var = ck = ik = None
        if wv is not None:
            var = self.mvm(xp.squared(ctx.var_dtype), wv, shared, c)
            ck, ik = self._read_keys(ctx)
        k = self._epilogue_operands(ctx, c, y)
        tail = self._fused_tail(ctx, k, x)
        if tail is not None and self.tail is not None:
            out = epilogue(ctx.compiled)(y, var, ck, ik, k.gain, k.offset, k.delta, k.lo, k.hi, k.slice_w,
                                         k.scale, k.bias, tail=tail)  # (B, c, H', W', O)
            n, _, ho, wo, o = out.shape
            return mark(out.view(n * c, ho, wo, o).permute(0, 3, 1, 2), self.tail)
        out = epilogue(ctx.compiled)(y, var, ck, ik, k.gain, k.offset, k.delta, k.lo, k.hi, k.slice_w, k.scale,
                                     k.bias, hw=self._positions_hw(x, int(y.shape[1])))
        if k.extra is not None:
            out = out + k.extra.view(1, 1, c, -1)
        if ctx.mode == "chip":
            extra = self.sram_output(xp, ctx, shared, c)
            if extra is not None:
                out = out + extra
        return self.finish(out, x, shared)

    def _fused_tail(self, ctx: RunContext, k: EpilogueOperands, x: Tensor
                    ) -> TailSpec | None:
        """(ops, H, W) when this pass may apply the layer's digital tail inside the compiled epilogue: a plain
        chip run, with nothing added after the kernel and nobody hooked to the layer's own output."""
        if (self.tail is None or ctx.mode != "chip" or not ctx.compiled or torch.is_grad_enabled()
                or k.extra is not None or self.sram_w.numel() or self._forward_hooks):
            return None
        return (self.tail.ops, *self._positions_hw(x, 0))

    def _positions_hw(self, x: Tensor, n_l: int) -> tuple[int, int]:
        """The ``n_l`` output positions of input ``x`` as (rows, columns): read-noise draws pair columns."""
        return 1, n_l

    def _epilogue_operands(self, ctx: RunContext, c: int, y: Tensor) -> EpilogueOperands:
        """ADC step and errors, output scale and registers of this pass's chips: the same for every image
        sub-batch of a chip block, so computed once per block (when no gradient is being taken)."""
        key = (id(self), "operands", ctx.mode, c)
        if not torch.is_grad_enabled() and key in ctx.cache:
            return ctx.cache[key]
        gain = offset = delta = None
        lo = hi = 0
        cc = self.config.circuit
        if cc.adc_bits and ctx.mode != "calibrate":
            if not bool(self.adc_fs.any()):
                raise NvcimError("the ADC range is not calibrated: call model.calibrate(x) or set "
                                 "circuit.adc_range")
            delta = (self.adc_fs / 2 ** (cc.adc_bits - 1)).expand(self.row_tiles, self.n_slices,
                                                                   self.out_features)
            lo, hi = adc_codes(cc.adc_bits)
        if ctx.mode == "chip" and (cc.adc_gain_sigma or cc.adc_offset_sigma):
            gain = self.adc_gain[ctx.chips]
            offset = self.adc_offset[ctx.chips] * self._adc_range_for_offset()
        scale = self.scale.view(1, -1).expand(c, -1)
        bias = self.bias if self.bias is not None else torch.zeros(self.out_features, device=y.device)
        extra = None
        if ctx.mode == "chip":
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
                               extra)
        if not torch.is_grad_enabled():
            ctx.cache[key] = ops
        return ops

    def _train_forward(self, x: Tensor, ctx: RunContext) -> Tensor:
        """Noise-injection training: the forward pass sees a freshly drawn chip's weights (and quantised
        inputs), the backward pass treats them as the ideal weights (straight-through)."""
        if self.layer_name in ctx.act_quant:
            step, bits, signed = ctx.act_quant[self.layer_name]
            lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            x = torch.clamp(ste_round(x / step), lo, hi) * step  # learned step size (LSQ-style)
        elif self.config.circuit.dac_bits and bool(self.dac_fs > 0):
            x = self.apply_dac(x)
        w = self.weight + (self.fresh_weights(ctx.train_chip, ctx.censor) - self.weight).detach()
        return self.digital_with(x, w)

    def _adc_range_for_offset(self) -> Tensor:
        fs = self.adc_fs if bool(self.adc_fs.any()) else self._signal_full_scale()
        return fs.expand(self.row_tiles, self.n_slices, self.out_features)

    def _read_keys(self, ctx: RunContext) -> tuple[Tensor, Tensor]:
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

    def apply_dac(self, x: Tensor, compiled: bool = False) -> Tensor:
        """The DAC on the layer's inputs; ``compiled``: in one fused pass (the same numbers) when no gradient
        is taken."""
        bits = self.config.circuit.dac_bits
        if not bits:
            return x
        if not bool(self.dac_fs > 0):
            raise NvcimError(f"{self.layer_name}: the DAC range is not calibrated: call model.calibrate(x) "
                             "or set circuit.dac_range")
        if compiled and not torch.is_grad_enabled():
            return dac_kernel(bits, bool(self.dac_signed))(x, self.dac_fs)
        return dac(x, self.dac_fs, bits, bool(self.dac_signed))

    # ---- calibration ----------------------------------------------------------------------------
    def _percentile(self, v: Tensor, dim: int | None = None) -> Tensor:
        q = self.config.circuit.adc_percentile / 100.0
        if dim is None:
            v = v.reshape(-1)
            k = max(1, min(v.numel(), math.ceil(q * v.numel())))
            return v.float().kthvalue(k).values
        n = v.shape[dim]
        k = max(1, min(n, math.ceil(q * n)))
        return v.float().kthvalue(k, dim=dim).values

    def _calibrate_input(self, x: Tensor, again: bool = False) -> None:
        """DAC range from inputs ``x``; ``again``: a further read in the same calibration pass (widen only)."""
        cc = self.config.circuit
        signed = torch.tensor(bool((x < 0).any()), device=self.dac_fs.device)
        fs = torch.tensor(cc.dac_range) if cc.dac_range else self._percentile(x.detach().abs())
        fs = fs.to(self.dac_fs).clamp_min(1e-12)
        self.dac_signed, self.dac_fs = (signed | self.dac_signed, torch.maximum(fs, self.dac_fs)) if again else (
            signed, fs)

    def _signal_full_scale(self) -> Tensor:
        d = self.config.device
        xfs = self.dac_fs if bool(self.dac_fs > 0) else torch.ones(())
        return xfs * self.rows_per_tile() * (d.g_max - d.g_min)

    def _calibrate_output(self, y: Tensor, again: bool = False) -> None:
        cc = self.config.circuit
        if cc.adc_range:
            self.adc_fs = (cc.adc_range * self._signal_full_scale()).to(self.dac_fs).reshape(())
            return
        a = y.detach().abs()  # (B, L, 1, T, S, O)
        if cc.adc_per_column:
            per = a.permute(3, 4, 5, 0, 1, 2).reshape(a.shape[3], a.shape[4], a.shape[5], -1)
            fs = self._percentile(per, dim=-1)
        else:
            per = a.permute(3, 4, 0, 1, 2, 5).reshape(a.shape[3], a.shape[4], -1)
            fs = self._percentile(per, dim=-1).unsqueeze(-1)
        fs = fs.clamp_min(1e-30).to(self.dac_fs)
        self.adc_fs = torch.maximum(fs, self.adc_fs) if again and self.adc_fs.shape == fs.shape else fs

    def needs_calibration(self) -> bool:
        cc = self.config.circuit
        return bool(cc.adc_bits or cc.dac_bits or cc.adc_offset_sigma)

    def is_calibrated(self) -> bool:
        return bool(self.dac_fs > 0) or not self.needs_calibration()

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


@register(nn.Linear)
class AnalogLinear(AnalogLayer):
    """Analog ``nn.Linear``: K = in_features rows, split evenly over ceil(K / ``array.rows``) tiles."""

    def __init__(self, digital: nn.Linear, config: ChipConfig, name: str) -> None:
        super().__init__(digital, config, name)
        self.in_features = digital.in_features

    @property
    def row_tiles(self) -> int:
        return math.ceil(self.k / self.config.array.rows)

    def rows_per_tile(self) -> int:
        return math.ceil(self.k / self.row_tiles)

    def row_tile_index(self) -> Tensor:
        return torch.arange(self.k) // self.rows_per_tile()

    def check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ShapeError(f"layer '{self.layer_name}' expects inputs of shape (batch, ..., "
                             f"{self.in_features}), got {tuple(x.shape)}")

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """As :meth:`AnalogLayer.forward`, on inputs (batch, ..., in_features); an input whose batch is not
        its first dimension (a sequence-first (L, B, E) inside a transformer) is recognised when exactly one
        other dimension has the batch's size."""
        ctx = self.ctx
        if ctx is not None and ctx.mode in ("chip", "calibrate", "nominal") and x.dim() > 2:
            n = ctx.batch * (int(ctx.chips.numel()) if ctx.mode == "chip" and ctx.chips is not None else 1)
            if x.shape[0] not in (n, ctx.batch):
                dims = [d for d in range(1, x.dim() - 1) if x.shape[d] == n]
                if len(dims) == 1:
                    return super().forward(x.movedim(dims[0], 0)).movedim(0, dims[0])
        return super().forward(x)

    def pack(self, w: Tensor, shared: bool) -> Tensor:
        t, r = self.row_tiles, self.rows_per_tile()
        c, s, o = w.shape[:3]
        wt = self._to_tile_rows(w)  # (c, S, O, T, R)
        if shared:
            return wt.permute(3, 4, 0, 1, 2).reshape(t, r, c * s * o)
        return wt.permute(0, 3, 4, 1, 2).reshape(c * t, r, s * o)

    def prepare(self, x: Tensor, shared: bool, c: int) -> Prepared:
        t, r = self.row_tiles, self.rows_per_tile()
        n = x.shape[0] // (1 if shared else c)
        xt = F.pad(x.reshape(x.shape[0], -1, self.k), (0, t * r - self.k))
        n_l = xt.shape[1]
        if shared:
            return Prepared(xt.reshape(n * n_l, t, r).transpose(0, 1), n, n_l)  # (T, B*L, R)
        return Prepared(xt.reshape(n, c, n_l, t, r).permute(1, 3, 0, 2, 4).reshape(c * t, n * n_l, r), n, n_l)

    def mvm(self, p: Prepared, packed: Tensor, shared: bool, c: int, s: int = 0) -> Tensor:
        t, s, o = self.row_tiles, s or self.n_slices, self.out_features
        if shared:
            return torch.bmm(p.x, packed).view(t, p.n, p.n_l, c, s, o).permute(1, 2, 3, 0, 4, 5)
        return torch.bmm(p.x, packed).view(c, t, p.n, p.n_l, s, o).permute(2, 3, 0, 1, 4, 5)

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        n, _, c, o = y.shape
        return y.transpose(1, 2).reshape(n * c, *x.shape[1:-1], o)


@register(nn.Conv2d)
class AnalogConv2d(AnalogLayer):
    """Analog ``nn.Conv2d``, unrolled as K = (C_in / groups) kh kw rows.

    Tiles are kernel-aligned: a tile holds the whole kernels of at most floor(rows / (kh kw)) input
    channels, so a kernel never straddles two arrays, and each tile is one group of a grouped convolution.
    Channels are spread evenly over the tiles (6 channels of 5x5 on 128-row arrays: 3 + 3, not 5 + 1).
    A grouped (or depthwise) convolution puts each group on arrays of its own: group j's output columns
    see only the rows of group j's input channels. ``padding='same'`` and every ``padding_mode`` pad the
    input digitally before the DAC, as the periphery would (zero padding of a plain convolution stays
    inside the product, which is the same).
    """

    def __init__(self, digital: nn.Conv2d, config: ChipConfig, name: str) -> None:
        kk = digital.kernel_size[0] * digital.kernel_size[1]
        if kk > config.array.rows:
            raise ConversionError(f"{name}: one {digital.kernel_size} kernel needs {kk} rows but array.rows = "
                                  f"{config.array.rows}; use larger tiles")
        self.in_channels, self.kernel_size = digital.in_channels, digital.kernel_size
        self.groups = digital.groups
        self.cg = digital.in_channels // digital.groups  # input channels per group
        self.stride, self.dilation = digital.stride, digital.dilation
        self.pre_pad: tuple[int, ...] | None = None
        self.pad_mode = "constant" if digital.padding_mode == "zeros" else digital.padding_mode
        if isinstance(digital.padding, str) or digital.padding_mode != "zeros":
            # (left, right, top, bottom), as nn.Conv2d pads for 'same' or a padding_mode of its own
            self.pre_pad = tuple(digital._reversed_padding_repeated_twice)
            self.padding: tuple[int, ...] = (0, 0)
        else:
            self.padding = tuple(digital.padding)
        super().__init__(digital, config, name)

    def pad_input(self, x: Tensor) -> Tensor:
        """The input as the array sees it: padded first where the convolution cannot pad with zeros itself."""
        if self.pre_pad is None or not any(self.pre_pad):
            return x
        return F.pad(x, self.pre_pad, mode=self.pad_mode)

    def unfold_input(self, v: Tensor) -> Tensor:
        """Inputs ``v`` (B, C_in, H, W) as the rows of the matrix product, (B L groups, K)."""
        cols = F.unfold(self.pad_input(v), self.kernel_size, self.dilation, self.padding,  # type: ignore[arg-type]
                        self.stride)  # (B, C_in kh kw, L), group-major rows
        b, _, n_l = cols.shape
        return cols.view(b, self.groups, self.k, n_l).permute(0, 3, 1, 2).reshape(-1, self.k)

    @property
    def ch_per_tile(self) -> int:
        """Input channels per tile: as few tiles as whole kernels allow, the channels spread evenly."""
        fit = min(self.config.array.rows // (self.kernel_size[0] * self.kernel_size[1]), self.cg)
        return math.ceil(self.cg / math.ceil(self.cg / fit))

    @property
    def row_tiles(self) -> int:
        """Row tiles of each group."""
        return math.ceil(self.cg / self.ch_per_tile)

    def rows_per_tile(self) -> int:
        return self.ch_per_tile * self.kernel_size[0] * self.kernel_size[1]

    def row_tile_index(self) -> Tensor:
        kk = self.kernel_size[0] * self.kernel_size[1]
        return torch.arange(self.k) // (kk * self.ch_per_tile)

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"layer '{self.layer_name}' expects inputs of shape (batch, {self.in_channels}, H, W),"
                             f" got {tuple(x.shape)}")

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(self.pad_input(x), w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def pack(self, w: Tensor, shared: bool) -> Tensor:
        t, ct, g = self.row_tiles, self.ch_per_tile, self.groups
        kh, kw = self.kernel_size
        c, s, o = w.shape[:3]
        og = o // g
        pad_ch = t * ct - self.cg
        wk = F.pad(w.reshape(c, s, g, og, self.cg, kh * kw), (0, 0, 0, pad_ch))
        wk = wk.reshape(c, s, g, og, t, ct, kh, kw)
        # filters in the order of the convolution's groups: (tile, chip) shared, (chip, tile) otherwise, with
        # the model's groups outermost (shared) or inside the chip (per chip), as the inputs are laid out
        order = (2, 4, 0, 1, 3, 5, 6, 7) if shared else (0, 2, 4, 1, 3, 5, 6, 7)
        wg = wk.permute(*order).reshape(c * g * t * s * og, ct, kh, kw)
        return wg.contiguous(memory_format=torch.channels_last)

    def _group_pad(self, x: Tensor, lead: int) -> Tensor:
        """(..., C_in, H, W) -> (..., groups t ct, H, W): each group's channels padded to whole tiles."""
        pad_ch = self.row_tiles * self.ch_per_tile - self.cg
        if not pad_ch:
            return x
        h, wd = x.shape[-2:]
        xg = F.pad(x.reshape(*x.shape[:lead], self.groups, self.cg, h, wd), (0, 0, 0, 0, 0, pad_ch))
        return xg.reshape(*x.shape[:lead], -1, h, wd)

    def prepare(self, x: Tensor, shared: bool, c: int) -> Prepared:
        """Channels-last input of the grouped convolution (several times faster for many small groups on
        CPU): (B, C_in', H, W) shared, or (B, c C_in', H, W) with each chip's channels side by side, built
        from the activation layout (B c, C_in, H, W) in one copy. C_in' pads each group's channels to
        whole tiles."""
        n = x.shape[0] // (1 if shared else c)
        h, wd = x.shape[-2:]
        if shared:
            xin = self._group_pad(x, 1).contiguous(memory_format=torch.channels_last)
            if xin.shape[1] == 1:  # one channel is NCHW and NHWC alike; oneDNN then picks NCHW (2x slower)
                xin = xin.as_strided(xin.shape, (h * wd, 1, wd, 1))
            return Prepared(xin, n, 0)
        xin = self._group_pad(x.reshape(n, c, self.in_channels, h, wd), 2)
        rows = contiguous_rows(xin.permute(0, 3, 4, 1, 2))  # (B, H, W, c, C_in')
        return Prepared(rows.view(n, h, wd, -1).permute(0, 3, 1, 2), n, 0)

    def mvm(self, p: Prepared, packed: Tensor, shared: bool, c: int, s: int = 0) -> Tensor:
        t, s, o, g = self.row_tiles, s or self.n_slices, self.out_features, self.groups
        og = o // g
        if shared:
            y = self._conv(p.x, packed, g * t)  # output channels (g, t, c, s, og)
            if g == 1:
                return y.view(p.n, -1, t, c, s, o).transpose(2, 3)
            y = y.view(p.n, -1, g, t, c, s, og).permute(0, 1, 4, 3, 5, 2, 6)
            return y.reshape(p.n, -1, c, t, s, o)
        y = self._conv(p.x, packed, c * g * t)  # output channels (c, g, t, s, og)
        if g == 1 or t * s == 1:
            return y.view(p.n, -1, c, t, s, o)
        return y.view(p.n, -1, c, g, t, s, og).permute(0, 1, 2, 4, 5, 3, 6).reshape(p.n, -1, c, t, s, o)

    def _conv(self, x: Tensor, w: Tensor, groups: int) -> Tensor:
        """Grouped convolution of a prepared input; returns the output as a (N, H*W, C_out) tensor."""
        y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, groups=groups)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, y.shape[1])

    def finish(self, y: Tensor, x: Tensor, shared: bool) -> Tensor:
        n, _, c, o = y.shape
        ho, wo = self._out_hw(x.shape[-2:])
        y = contiguous_rows(y.transpose(1, 2))  # chips before positions, as the activation layout needs
        return y.view(n * c, ho, wo, o).permute(0, 3, 1, 2)  # NCHW view in channels-last memory

    def _positions_hw(self, x: Tensor, n_l: int) -> tuple[int, int]:
        return self._out_hw(x.shape[-2:])

    def _out_hw(self, hw: torch.Size) -> tuple[int, int]:
        out = []
        for i in range(2):
            k = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            out.append((hw[i] + 2 * self.padding[i] - k) // self.stride[i] + 1)  # type: ignore[operator]
        return out[0], out[1]
