"""The cells of an analog layer's arrays: geometry, programming, read-back state, and the conductances the
matrix product uses.

Every layer keeps, as buffers, the programmed conductances of every chip along a leading chip dimension:
``g_pos``/``g_neg`` of shape ``(N, S, out, K)`` (``g_neg`` is ``(N, S, n_col_tiles, K)`` for reference
columns), their stuck-at fault codes, drift factors, ADC gain/offset errors and drift compensation.
Programming draws are counter-based (:mod:`.rng`): chip k is a pure function of (config, seed, k), so
the cells can also be made on demand, for each pass's chip block only (``Runtime.cells``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..circuits import attenuation, get_read_noise
from ..config.schema import ChipConfig
from ..devices import get_model, has_drift, round_to_levels
from ..errors import NvcimError
from ..mapping import Mapped, Mapping
from . import programming, rng
from .programming import SideKeys, WriteSpec, cells_from_draws, drift_compensation, write_side

CELLS = ("g_pos", "g_neg", "faults_pos", "faults_neg", "drift_pos", "drift_neg")  # per chip and cell


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
    on_demand = False  # cells not stored: written for each pass's chip block (Runtime.cells)
    _resident: tuple[int, ...] | None = None  # on demand: the chips whose cells the buffers hold
    _source: tuple[Mapped, dict[str, tuple[Tensor, Tensor | None]]] | None = None

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
        return int(self.chip_ids.shape[0])

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

    def program(self, seed: int, chip_ids: Tensor, chunk: int = 0, on_demand: bool = False) -> None:
        """Program all chips ``chip_ids`` (global ids): noisy writes, faults, drift; fills the buffers.
        ``chunk``: chips written together (default: as many as keep each float temporary of a write within
        32 MiB, glibc's heap limit, so that none is a fresh mapping faulted in page by page; up to 64; the
        draws are counter-based, so the chunking changes no number). ``on_demand``: store no cells; each
        pass writes the cells of its chip block again from the same draws (:meth:`effective`).

        ``g_pos``/``g_neg`` hold the conductances right after programming (time t0, faults applied);
        ``drift_pos``/``drift_neg`` the per-cell factors (t_read/t0)^-nu that reads apply (empty: no drift).
        """
        cfg = self.config
        dev = self.weight.device
        m = self.mapped()
        self.seed = seed
        self.scale, self.slice_w = m.scale.to(dev), m.slice_weights.to(dev)
        n = len(chip_ids)
        if tuple(self.row_perm.shape) != (n, self.k):  # a fresh chip: logical row k on physical row k
            self.row_perm = torch.arange(self.k, device=dev).expand(n, -1).clone()
        self.chip_ids = chip_ids.to(dev)
        self._nominal = None
        for name in CELLS:  # the old state goes first: programming holds one state, not two
            setattr(self, name, torch.zeros(0, device=dev))
        self.drift_comp = torch.ones(n, dtype=self.weight.dtype, device=dev)
        self.on_demand, self._resident = on_demand, None
        self._source = (m, self._targets(m))  # what the chips were programmed to (on demand: kept for passes)
        if not on_demand:
            self._write_cells(torch.arange(n), chunk)
            self._source = None
        shape, c = (self.row_tiles, self.n_slices, self.out_features), cfg.circuit

        def adc_error(sigma: float, what: str) -> Tensor:  # nothing drawn for an error-free ADC
            key = rng.key(seed, self.layer_name, what)
            return (sigma * rng.draw("normal", key, chip_ids, shape, compiled=self.compile_draws)).to(dev) \
                if sigma else torch.zeros(n, *shape, device=dev)

        self.adc_gain = 1.0 + adc_error(c.adc_gain_sigma, "adc-gain")
        self.adc_offset = adc_error(c.adc_offset_sigma, "adc-offset")
        self.tune_gain = torch.ones(n, self.out_features, device=dev)
        self.tune_offset = torch.zeros(n, self.out_features, device=dev)

    def _write_cells(self, chips: Tensor, chunk: int = 0) -> None:
        """Write the cells of ``chips`` (indices into ``chip_ids``) into the cell buffers, in that order,
        chunk by chunk into place (CPU buffers of the right shape are reused), and their drift compensation.
        Cells are written on the CPU; a GPU layer's buffers are copied over afterwards."""
        dev = self.weight.device
        if self._source is None:  # an on-demand layer loaded from a state_dict: from the loaded weights
            m = self.mapped()
            self._source = (m, self._targets(m))
        m, targets = self._source
        n = len(chips)
        parts = -(-n // (chunk or max(1, min(64, 2**23 // max(1, m.pos.numel())))))
        bounds = [round(i * n / parts) for i in range(parts + 1)]  # even chunks: 3, 3, 2, 2, not 3, 3, 3, 1
        ids, perm = self.chip_ids.cpu()[chips], self.row_perm.cpu()[chips]
        routed = not bool((perm == torch.arange(self.k)).all())
        bufs, drifts = {}, has_drift(self.config.device)
        for name in CELLS:  # float cells in the weights' format (float64 after model.double())
            t, dtype = getattr(self, name), torch.int8 if name.startswith("faults") else self.weight.dtype
            want = (0,) if name.startswith("drift") and not drifts else (n, *targets[name[-3:]][0].shape[1:])
            bufs[name] = t if tuple(t.shape) == want and t.dtype == dtype and t.device.type == "cpu" else \
                torch.empty(want, dtype=dtype)
        for a, b in zip(bounds, bounds[1:]):
            out = {side: tuple(bufs[f"{kind}_{side}"][a:b] if bufs[f"{kind}_{side}"].numel() else bufs[f"{kind}_{side}"]
                               for kind in ("g", "faults", "drift")) for side in ("pos", "neg")}
            comp = self._write_all(m, ids[a:b], perm[a:b] if routed else None, targets=targets, out=out)[3]
            self.drift_comp[chips[a:b].to(dev)] = comp.to(dev)
        for name, t in bufs.items():
            setattr(self, name, t.to(dev))

    def not_stored(self, what: str) -> NvcimError:
        """The error for ``what``, an operation on every chip's cells, on a layer that makes them on demand."""
        return NvcimError(f"{what} needs every chip's cells in memory, but this model makes them on demand for "
                          f"each chip block (Runtime.cells): convert with Runtime(cells='stored'), with fewer "
                          f"chips if they do not fit")

    def _between(self, ids: Tensor, shape: tuple[int, ...], reference: bool) -> Tensor:
        return programming.between_chip_normals(self.config.variability, self.seed, self.layer_name, ids, shape,
                                                reference, self.row_tile_index(),
                                                (self.row_tiles, self.n_col_tiles), self.config.array.cols)

    def _targets(self, m: Mapped) -> dict[str, tuple[Tensor, Tensor | None]]:
        return programming.level_targets(m, self.config.device, self.config.variability)

    def _write_all(self, m: Mapped, ids: Tensor, perm: Tensor | None, censor: float = 0.0, stream: bool = False,
                   targets: dict[str, tuple[Tensor, Tensor | None]] | None = None,
                   out: dict[str, tuple[Tensor, ...]] | None = None
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
        """One programming of every cell of chips ``ids`` to the mapping ``m``, on the CPU: per side the
        conductances at t0 (faults applied), the fault codes and the drift factors (t_read/t0)^-nu (empty
        without drift), and the chips' drift compensation. The one programming function of evaluation chips
        (counter-based draws, ``perm`` (n, K) the row routing, None: identity) and of training chips
        (``stream``: one fresh chip from the fast generator, without fault codes; ``censor``: draws clipped at that
        many sigma).
        ``targets``: :meth:`_targets` of ``m`` if the caller has them; ``out``: per side the CPU tensors that
        evaluation chips are written into (conductances, fault codes, drift factors)."""
        spec = WriteSpec(self.config.device, self.config.variability, censor, has_drift(self.config.device))
        targets = targets or self._targets(m)
        g0, codes, factor, gt = {}, {}, {}, {}
        for side, target in (("pos", m.pos), ("neg", m.neg)):
            g_t, lvl = targets[side]
            shape = tuple(target.shape)
            z_chip = self._between(ids, shape, side == "neg" and m.reference)

            def key(purpose: str, side: str = side) -> int:
                return rng.key(self.seed, self.layer_name, side, purpose)

            if stream:  # a training chip: plain generator draws, eager
                def draw(kind: str, purpose: str, shape: tuple[int, ...] = shape) -> Tensor:
                    return rng.draw_stream(kind, key(purpose), int(ids[0]), shape)

                model = get_model(spec.device, spec.variability)
                written: tuple[Tensor, ...] = cells_from_draws(spec, model, g_t, lvl, draw("uniform", "fault"),
                                                               draw("normal", "program"), z_chip,
                                                               draw("normal", "drift") if spec.has_drift else None,
                                                               codes=False)
            else:
                keys = SideKeys(rng.chip_keys(key("fault"), ids), rng.chip_keys(key("program"), ids),
                                rng.chip_keys(key("drift"), ids) if spec.has_drift else None)
                # faults and drift exponents belong to physical cells: drawn in physical order, then seen
                # through the row routing (identity unless map-correct moved rows)
                rows = None if perm is None else perm.view(len(ids), *([1] * (len(shape) - 1)), -1).expand(
                    len(ids), *shape)
                assert out is not None
                written = out[side]
                write_side(spec, g_t, lvl, z_chip, keys, rows, written, self.compile_draws)
            g0[side], codes[side], factor[side] = written
            gt[side] = g0[side] * factor[side] if factor[side].numel() else g0[side]
        return g0, codes, factor, drift_compensation(self.config.device.drift.compensate, m, g0, gt)

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
        z_chip = self._between(ids, shape, side == "neg" and self.mapped().reference)
        return model.sample(g_t, lvl, z_cell, z_chip).to(self.weight.device)

    def rewrite(self, side: str, mask: Tensor, target: Tensor | None = None) -> Tensor:
        """Re-program the cells of ``side`` where ``mask`` (N, S, O', K) is true with a fresh noisy write,
        to the mapped targets or to ``target`` (N, S, O', K). Stuck cells do not change, but their pulses are
        spent like any other (the controller cannot tell them apart). Every call draws anew (a per-layer write
        counter keys it). Returns the pulses spent per chip."""
        if self.on_demand:
            raise self.not_stored("re-programming cells")
        g = self.g_pos if side == "pos" else self.g_neg
        codes = self.faults_pos if side == "pos" else self.faults_neg
        live = mask & (codes == 0)
        self.writes += 1
        if target is None:
            m = self.mapped()
            target = (m.pos if side == "pos" else m.neg).unsqueeze(0)
        new = self._sample(side, self.chip_ids.cpu(), f"rewrite-{int(self.writes)}", target)
        setattr(self, f"g_{side}", torch.where(live, new, g))
        self._recompensate()
        return mask.flatten(1).sum(1)

    def _recompensate(self) -> None:
        """Every chip's drift compensation again, after its cells changed."""
        if self.drift_pos.numel():
            g0, now = {"pos": self.g_pos, "neg": self.g_neg}, dict(zip(("pos", "neg"), self.effective()))
            self.drift_comp = drift_compensation(self.config.device.drift.compensate, self.mapped(), g0,
                                                 now).to(self.g_pos)

    @torch.no_grad()
    def remap_rows(self, perm: Tensor) -> Tensor:
        """Route logical row k of chip n to physical row ``perm[n, k]`` (a permutation within each row tile,
        as the input driver's routing would do). The cells keep their physical state: a moved row now sees
        the conductances, faults and drift of its new cells (re-program them afterwards). Returns the
        number of moved rows per chip."""
        if self.on_demand:
            raise self.not_stored("remapping rows")
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
        self._recompensate()
        return moved.cpu()

    def fresh_weights(self, chip_id: int, censor: float = 0.0) -> Tensor:
        """Effective weights (shape of ``weight``) of a newly drawn chip ``chip_id``: see :meth:`fresh_chip`."""
        return self.fresh_chip(chip_id, censor)[0]

    @torch.no_grad()
    def fresh_chip(self, chip_id: int, censor: float = 0.0) -> tuple[Tensor, Tensor]:
        """Effective weights (shape of ``weight``) of a newly drawn chip ``chip_id`` programmed with the
        current weights: levels, programming variation, faults, drift (and its compensation), IR drop; and
        the (O,) factor from conductance units to weight units of its columns (scale x drift compensation),
        which an ADC in conductance units needs. Training draws one per step: it maps the weights once and
        uses the fast generator (:func:`rng.draw_stream`) for its per-cell draws."""
        m = self.mapped()
        g0, _, factor, comp = self._write_all(m, torch.tensor([chip_id]), None, censor=censor, stream=True)
        gt = {side: g0[side] * factor[side] if factor[side].numel() else g0[side] for side in g0}
        dev = self.weight.device
        w, _ = self.conductances(gt["pos"].to(dev), gt["neg"].to(dev))  # (1, S, O, K)
        comp = comp.to(w)
        # decoded with the scale of *this* mapping: the programmed chips' scale (``self.scale``) is that of
        # the weights when they were last programmed, and training moves the weights away from them
        column_scale = (m.scale.to(w).reshape(-1) * comp.reshape(-1)).expand(self.out_features)
        return self.from_matrix(self.decode(w, m.scale, m.slice_weights)[0] * comp), column_scale

    def decode(self, diff: Tensor, scale: Tensor | None = None, slice_w: Tensor | None = None) -> Tensor:
        """Weights (..., O, K) that conductance differences (..., S, O, K) stand for: shift-and-add over
        slices, times the column scale (what the digital periphery does). ``scale`` and ``slice_w`` default
        to the programmed chips' own."""
        sw = (self.slice_w if slice_w is None else slice_w).to(diff).view(-1, 1, 1)
        return (diff * sw).sum(-3) * (self.scale if scale is None else scale).to(diff).view(-1, 1)

    def effective(self, chips: Tensor | slice | None = None) -> tuple[Tensor, Tensor]:
        """Conductances (S) the array holds at read time (after drift) for ``chips`` (default all). On
        demand, the cells of ``chips`` (an index tensor) are written now, unless they are the resident ones."""
        sel = self._select(chips)
        pos, neg = self.g_pos[sel], self.g_neg[sel]
        if self.drift_pos.numel():
            pos, neg = pos * self.drift_pos[sel], neg * self.drift_neg[sel]
        return pos, neg

    def programmed(self, chips: Tensor | slice | None = None) -> tuple[Tensor, Tensor]:
        """Conductances (S) of ``chips`` right after programming (t0, before drift), as :meth:`effective`."""
        sel = self._select(chips)
        return self.g_pos[sel], self.g_neg[sel]

    def _select(self, chips: Tensor | slice | None) -> Tensor | slice:
        """The index of ``chips`` into the cell buffers; on demand, their cells are written first unless they
        are the resident ones."""
        if not self.on_demand:
            return slice(None) if chips is None else chips
        if not isinstance(chips, Tensor):
            raise self.not_stored("reading every chip's conductances")
        key = tuple(chips.tolist())
        if key != self._resident:
            self._write_cells(chips.cpu())
            self._resident = key
        return slice(None)

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

    def conductances(self, pos: Tensor, neg: Tensor, at_t0: tuple[Tensor, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor | None]:
        """(G+ - G-) as the array sees it, with IR drop, and the read-noise variance weights. ``at_t0``: the
        same cells' conductances when programmed, for read-noise models that depend on them (None: as read).

        Reference columns are broadcast to their tile's columns; IR drop is applied to the weight cells
        (the two halves of a differential pair each as their own tile), not to reference columns.
        """
        r = self.config.array.wire_resistance
        reference = self.mapping.reference
        if r:
            pos = pos * self._ir(pos, r)
        if reference:
            neg = self.mapping.expand_neg(neg, self.out_features)
        elif r:
            neg = neg * self._ir(neg, r)
        d = self.config.device
        w2 = None
        if d.read_noise:
            pos0, neg0 = at_t0 if at_t0 is not None else (None, None)
            if neg0 is not None:
                neg0 = self.mapping.expand_neg(neg0, self.out_features)
            w2 = get_read_noise(d.read_noise_model).pair_variance(pos, neg, d, pos0, neg0)
        return pos - neg, w2

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
