"""The cells of an analog layer's arrays: geometry, programming, read-back state, and the conductances the
matrix product uses.

Every layer keeps, as buffers, the programmed conductances of every chip along a leading chip dimension:
``g_pos``/``g_neg`` of shape ``(N, S, out, K)`` (``g_neg`` is ``(N, S, n_col_tiles, K)`` for reference
columns), their stuck-at fault codes, drift factors, ADC gain/offset errors and drift compensation.
Programming draws are counter-based (:mod:`.rng`): chip k is a pure function of (config, seed, k).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..circuits import attenuation, get_read_noise
from ..config.schema import ChipConfig
from ..devices import get_model, round_to_levels
from ..errors import NvcimError
from ..mapping import Mapped, Mapping
from . import rng
from .programming import SideKeys, WriteSpec, cells_from_draws, write_side


class CellArrays(nn.Module):
    """Array geometry and cell state of an analog layer (subclasses give the geometry of their kind)."""

    config: ChipConfig
    layer_name: str
    seed: int
    out_features: int
    k: int
    _nominal: tuple[Tensor, Tensor] | None
    mapping: Mapping

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
    compile_draws = False  # per-cell draws under torch.compile (same bits; the model sets it from its Runtime)

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

    def program(self, seed: int, chip_ids: Tensor, chunk: int = 0) -> None:
        """Program all chips ``chip_ids`` (global ids): noisy writes, faults, drift; fills the buffers.
        ``chunk``: chips written together (default: as many as keep each float temporary of a write within
        32 MiB, glibc's heap limit, so that none is a fresh mapping faulted in page by page; up to 64; the
        draws are counter-based, so the chunking changes no number).

        ``g_pos``/``g_neg`` hold the conductances right after programming (time t0, faults applied);
        ``drift_pos``/``drift_neg`` the per-cell factors (t_read/t0)^-nu that reads apply (empty: no drift).
        """
        cfg = self.config
        dev = self.weight.device
        m = self.mapped()
        self.seed = seed
        self.scale, self.slice_w = m.scale.to(dev), m.slice_weights.to(dev)
        n = len(chip_ids)
        chunk = chunk or max(1, min(64, 2**23 // max(1, m.pos.numel())))
        if tuple(self.row_perm.shape) != (n, self.k):  # a fresh chip: logical row k on physical row k
            self.row_perm = torch.arange(self.k, device=dev).expand(n, -1).clone()
        perm = self.row_perm.cpu()
        routed = not bool((perm == torch.arange(self.k)).all())
        self.chip_ids = chip_ids.to(dev)
        self._nominal = None
        targets = self._targets(m)
        names = ("g_pos", "g_neg", "faults_pos", "faults_neg", "drift_pos", "drift_neg", "drift_comp")
        for name in names:  # the old state goes first: programming holds one state, not two
            setattr(self, name, torch.zeros(0, device=dev))
        state: dict[str, Tensor] = {}
        for start in range(0, n, chunk):
            block = slice(start, start + chunk)
            g0, codes, factor, comp = self._write_all(m, chip_ids[block], perm[block] if routed else None,
                                                      targets=targets)
            parts = dict(zip(names, (g0["pos"], g0["neg"], codes["pos"], codes["neg"], factor["pos"],
                                     factor["neg"], comp)))
            for name, t in parts.items():  # written into place: no concatenated copy of the whole state
                if name not in state:
                    state[name] = torch.empty((n, *t.shape[1:]) if t.numel() else (0,), dtype=t.dtype, device=dev)
                if t.numel():
                    state[name][block] = t
        for name, t in state.items():
            setattr(self, name, t)
        shape = (self.row_tiles, self.n_slices, self.out_features)
        c = cfg.circuit
        self.adc_gain = (1.0 + c.adc_gain_sigma * rng.draw(
            "normal", rng.key(seed, self.layer_name, "adc-gain"), chip_ids, shape)).to(dev)
        self.adc_offset = (c.adc_offset_sigma * rng.draw(
            "normal", rng.key(seed, self.layer_name, "adc-offset"), chip_ids, shape)).to(dev)
        self.tune_gain = torch.ones(n, self.out_features, device=dev)
        self.tune_offset = torch.zeros(n, self.out_features, device=dev)

    def _targets(self, m: Mapped) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Per side the mapped targets (1, S, O', K), clipped to the conductance range and rounded to the
        device's levels, with their level indices (computed once per programming, not per chunk)."""
        d = self.config.device
        levels = get_model(d, self.config.variability).levels()
        return {side: round_to_levels(t.unsqueeze(0).cpu().clamp(d.g_min, d.g_max), levels)
                for side, t in (("pos", m.pos), ("neg", m.neg))}

    def _write_all(self, m: Mapped, ids: Tensor, perm: Tensor | None, censor: float = 0.0, stream: bool = False,
                   targets: dict[str, tuple[Tensor, Tensor | None]] | None = None
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
        """One programming of every cell of chips ``ids`` to the mapping ``m``, on the CPU: per side the
        conductances at t0 (faults applied), the fault codes and the drift factors (t_read/t0)^-nu (empty
        without drift), and the chips' drift compensation. The one programming function of evaluation chips
        (counter-based draws, ``perm`` (n, K) the row routing, None: identity) and of training chips
        (``stream``: one fresh chip from the fast generator; ``censor``: draws clipped at that many sigma).
        ``targets``: :meth:`_targets` of ``m`` if the caller has them."""
        spec = WriteSpec(self.config.device, self.config.variability, censor, self._has_drift())
        targets = targets or self._targets(m)
        g0, codes, factor, gt = {}, {}, {}, {}
        for side, target in (("pos", m.pos), ("neg", m.neg)):
            g_t, lvl = targets[side]
            shape = tuple(target.shape)
            z_chip = self._between(self.seed, ids, shape, side == "neg" and m.reference)

            def key(purpose: str, side: str = side) -> int:
                return rng.key(self.seed, self.layer_name, side, purpose)

            if stream:  # a training chip: plain generator draws, eager
                def draw(kind: str, purpose: str, shape: tuple[int, ...] = shape) -> Tensor:
                    return rng.draw_stream(kind, key(purpose), int(ids[0]), shape)

                model = get_model(spec.device, spec.variability)
                out = cells_from_draws(spec, model, g_t, lvl, draw("uniform", "fault"), draw("normal", "program"),
                                       z_chip, draw("normal", "drift") if spec.has_drift else None)
            else:
                keys = SideKeys(rng.chip_keys(key("fault"), ids), rng.chip_keys(key("program"), ids),
                                rng.chip_keys(key("drift"), ids) if spec.has_drift else None)
                # faults and drift exponents belong to physical cells: drawn in physical order, then seen
                # through the row routing (identity unless map-correct moved rows)
                rows = None if perm is None else perm.view(len(ids), *([1] * (len(shape) - 1)), -1).expand(
                    len(ids), *shape)
                out = write_side(spec, g_t, lvl, z_chip, keys, rows, self.compile_draws)
            g0[side], codes[side], factor[side] = out
            gt[side] = g0[side] * factor[side] if factor[side].numel() else g0[side]
        return g0, codes, factor, self._drift_compensation(m, g0, gt)

    def _has_drift(self) -> bool:
        d = self.config.device.drift
        return d.t_read != d.t0 and (d.nu_mean > 0 or d.nu_std > 0)

    def _sample(self, side: str, ids: Tensor, purpose: str, target: Tensor) -> Tensor:
        """One re-programming write of every cell of ``side`` on chips ``ids`` (fresh draws per purpose) to
        per-chip ``target`` conductances (N, S, O', K), on the layer's device (no faults: stuck cells keep
        their state)."""
        cfg = self.config
        model = get_model(cfg.device, cfg.variability)
        g_t, lvl = round_to_levels(target.cpu().clamp(cfg.device.g_min, cfg.device.g_max), model.levels())
        shape = tuple(target.shape[1:])
        z_cell = rng.draw("normal", rng.key(self.seed, self.layer_name, side, purpose), ids, shape,
                          compiled=self.compile_draws)
        z_chip = self._between(self.seed, ids, shape, side == "neg" and self.mapped().reference)
        return model.sample(g_t, lvl, z_cell, z_chip).to(self.weight.device)

    def rewrite(self, side: str, mask: Tensor, target: Tensor | None = None) -> Tensor:
        """Re-program the cells of ``side`` where ``mask`` (N, S, O', K) is true with a fresh noisy write,
        to the mapped targets or to ``target`` (N, S, O', K). Stuck cells do not change. Every call draws
        anew (a per-layer write counter keys it). Returns the pulses spent per chip."""
        g = self.g_pos if side == "pos" else self.g_neg
        codes = self.faults_pos if side == "pos" else self.faults_neg
        live = mask & (codes == 0)
        self.writes += 1
        if target is None:
            m = self.mapped()
            target = (m.pos if side == "pos" else m.neg).unsqueeze(0)
        new = self._sample(side, self.chip_ids.cpu(), f"rewrite-{int(self.writes)}", target)
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
        m = self.mapped()
        g0, _, factor, comp = self._write_all(m, torch.tensor([chip_id]), None, censor=censor, stream=True)
        gt = {side: g0[side] * factor[side] if factor[side].numel() else g0[side] for side in g0}
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
        d = self.config.device
        w2 = get_read_noise(d.read_noise_model).pair_variance(pos, neg, d.read_noise, d.g_max) if d.read_noise else None
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
