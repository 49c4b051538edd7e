"""The crossbar of one analog layer on N chips: the one owner of its per-chip state.

Buffers with a leading chip dimension: conductances ``g_pos``/``g_neg`` ``(N, S, O', K)`` (``g_neg``
``(N, S, n_col_tiles, K)`` for reference columns), fault codes, drift factors, row routing, ADC errors,
drift compensation and the digital registers (:mod:`.registers`). Everything else goes through the methods:
program, rewrite, remap rows, read, set a register, checkpoint, restore. Draws are counter-based
(:mod:`.rng`), so the cells can also be made on demand for each pass's chip block (``Runtime.cells``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..circuits import get_read_noise
from ..config.schema import ChipConfig
from ..devices import get_model, round_to_levels
from ..errors import NvcimError
from ..mapping import Mapped, Mapping
from . import registers, rng
from .converters import take_saved_shapes
from .geometry import TileGeometry
from .programming import drift_compensation
from .writes import CellWriter, Targets

CELLS = ("g_pos", "g_neg", "faults_pos", "faults_neg", "drift_pos", "drift_neg")  # per chip and cell
# what a method may change, each (N, ...) per chip: what a checkpoint holds
STATE = (*CELLS, "row_perm", "drift_comp", "tune_gain", "tune_offset", "sram_mask", "sram_w")


@dataclass
class _IRCache:
    """The IR-drop transfers of a crossbar's stored chips, valid while the cells have ``stamp``."""

    stamp: tuple
    pos: Tensor
    neg: Tensor
    done: Tensor  # (N,) bool, on the host: which chips are solved


class Crossbar(nn.Module):
    """Cells and per-chip registers of one layer. ``weights`` gives the layer's current weight matrix
    ``(O, K)`` (the ideal model's, which the chips are programmed from)."""

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
    sram_w: Tensor
    row_perm: Tensor  # (N, K): physical row of each logical row (identity unless rows were remapped)
    writes: Tensor

    def __init__(self, name: str, config: ChipConfig, mapping: Mapping, geometry: TileGeometry,
                 weights: Callable[[], Tensor]) -> None:
        super().__init__()
        self.name, self.config, self.mapping, self.geometry = name, config, mapping, geometry
        self.weights = weights
        self.seed = 0
        self.compile_draws = False  # per-cell draws under torch.compile (same bits; from the model's Runtime)
        self.on_demand = False  # cells not stored: written for each pass's chip block (Runtime.cells)
        self._resident: tuple[int, ...] | None = None  # on demand: the chips whose cells the buffers hold
        self._source: tuple[Mapped, Targets] | None = None
        self._nominal: tuple[Tensor, Tensor] | None = None
        self._ir: _IRCache | None = None  # IR-drop transfers of the stored chips read so far
        w = weights()
        z = torch.zeros(0, device=w.device)
        for n, t in dict(g_pos=z, g_neg=z, faults_pos=z.to(torch.int8), faults_neg=z.to(torch.int8), drift_pos=z,
                         drift_neg=z, adc_gain=z, adc_offset=z, drift_comp=z, scale=z, slice_w=z, chip_ids=z.long(),
                         tune_gain=z, tune_offset=z, sram_mask=z.bool(), sram_w=z, row_perm=z.long(),
                         writes=torch.zeros((), dtype=torch.long, device=w.device)).items():
            self.register_buffer(n, t)

    def reconfigure(self, config: ChipConfig, mapping: Mapping, geometry: TileGeometry, seed: int) -> None:
        """The design changed (a loaded model's config): forget what was derived from the old one."""
        self.config, self.mapping, self.geometry, self.seed, self._nominal = config, mapping, geometry, seed, None

    @property
    def n_chips(self) -> int:
        return int(self.chip_ids.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.slice_w.numel()) if self.slice_w.numel() else 1

    def writer(self) -> CellWriter:
        return CellWriter(self.config, self.name, self.seed, self.geometry, self.compile_draws)

    def mapped(self) -> Mapped:
        """The mapping of the layer's current weights."""
        return self.mapping.map(self.weights().detach().float().cpu())

    def not_stored(self, what: str) -> NvcimError:
        """The error for ``what``, an operation on every chip's cells, on a layer that makes them on demand."""
        return NvcimError(f"{what} needs every chip's cells in memory, but this model makes them on demand for "
                          f"each chip block (Runtime.cells): convert with Runtime(cells='stored'), with fewer "
                          f"chips if they do not fit")

    # ---- programming ----------------------------------------------------------------------------
    def program(self, seed: int, chip_ids: Tensor, chunk: int = 0, on_demand: bool = False) -> None:
        """Program all chips ``chip_ids`` (global ids): noisy writes, faults, drift; fills the buffers.
        ``chunk``: chips written together (:meth:`CellWriter.write_chips`). ``on_demand``: store no cells;
        each pass writes the cells of its chip block again from the same draws (:meth:`effective`).

        ``g_pos``/``g_neg`` hold the conductances right after programming (time t0, faults applied);
        ``drift_pos``/``drift_neg`` the per-cell factors (t_read/t0)^-nu that reads apply (empty: no drift).
        """
        w = self.weights()
        dev, g = w.device, self.geometry
        m = self.mapped()
        self.seed = seed
        self.scale, self.slice_w = m.scale.to(dev), m.slice_weights.to(dev)
        n = len(chip_ids)
        if tuple(self.row_perm.shape) != (n, g.k):  # a fresh chip: logical row k on physical row k
            self.row_perm = torch.arange(g.k, device=dev).expand(n, -1).clone()
        self.chip_ids = chip_ids.to(dev)
        self._nominal = None
        for name in CELLS:  # the old state goes first: programming holds one state, not two
            setattr(self, name, torch.zeros(0, device=dev))
        self.drift_comp = torch.ones(n, dtype=w.dtype, device=dev)
        self.on_demand, self._resident = on_demand, None
        writer = self.writer()
        self._source = (m, writer.targets(m))  # what the chips were programmed to (on demand: kept for passes)
        if not on_demand:
            self._write_cells(torch.arange(n), chunk)
            self._source = None
        shape, c = (g.row_tiles, self.n_slices, g.out_features), self.config.circuit

        def adc_error(sigma: float, what: str) -> Tensor:  # nothing drawn for an error-free ADC
            key = rng.key(seed, self.name, what)
            return (sigma * rng.draw("normal", key, chip_ids, shape, compiled=self.compile_draws)).to(dev) \
                if sigma else torch.zeros(n, *shape, device=dev)

        self.adc_gain = 1.0 + adc_error(c.adc_gain_sigma, "adc-gain")
        self.adc_offset = adc_error(c.adc_offset_sigma, "adc-offset")
        self.tune_gain = torch.ones(n, g.out_features, device=dev)
        self.tune_offset = torch.zeros(n, g.out_features, device=dev)

    def _write_cells(self, chips: Tensor, chunk: int = 0) -> None:
        """Write the cells of ``chips`` (indices into ``chip_ids``) into the cell buffers, in that order,
        chunk by chunk into place (CPU buffers of the right shape are reused), and their drift compensation.
        Cells are written on the CPU; a GPU layer's buffers are copied over afterwards."""
        w = self.weights()
        dev, writer = w.device, self.writer()
        if self._source is None:  # an on-demand layer loaded from a state_dict: from the loaded weights
            m = self.mapped()
            self._source = (m, writer.targets(m))
        m, targets = self._source
        perm = self.row_perm.cpu()[chips]
        routed = not bool((perm == torch.arange(self.geometry.k)).all())
        bufs, comp = writer.write_chips(m, targets, self.chip_ids.cpu()[chips], perm if routed else None,
                                        {name: getattr(self, name) for name in CELLS}, w.dtype, chunk)
        self.drift_comp[chips.to(dev)] = comp.to(dev)
        for name, t in bufs.items():
            setattr(self, name, t.to(dev))

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
        new = self.writer().sample(side, self.chip_ids.cpu(), f"rewrite-{int(self.writes)}", target,
                                   self.mapping.reference).to(g.device)
        setattr(self, f"g_{side}", torch.where(live, new, g))
        drift = self.drift_pos if side == "pos" else self.drift_neg
        if drift.numel():  # a re-written cell drifts anew, with a fresh exponent
            fresh = self.writer().sample_drift(side, self.chip_ids.cpu(), f"rewrite-{int(self.writes)}", target)
            setattr(self, f"drift_{side}", torch.where(live, fresh.to(drift), drift))
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
        n, k = self.n_chips, self.geometry.k
        perm = self.geometry.checked_routing(self.name, perm, n).to(self.row_perm.device)
        inv_old = torch.empty_like(self.row_perm).scatter_(
            -1, self.row_perm, torch.arange(k, device=perm.device).expand(n, -1).contiguous())
        idx = inv_old.gather(-1, perm)  # logical row now at perm[k] held it before: take its state
        for name in CELLS:
            t = getattr(self, name)
            if t.numel():
                setattr(self, name, t.gather(-1, idx.view(n, *([1] * (t.dim() - 2)), -1).expand_as(t)))
        moved = (perm != self.row_perm).sum(-1)
        self.row_perm = perm
        self._recompensate()
        return moved.cpu()

    # ---- reading the cells ----------------------------------------------------------------------
    def decode(self, diff: Tensor, scale: Tensor | None = None, slice_w: Tensor | None = None) -> Tensor:
        """Weights (..., O, K) that conductance differences (..., S, O, K) stand for: shift-and-add over
        slices, times the column scale (what the digital periphery does). ``scale`` and ``slice_w`` default
        to the programmed chips' own."""
        return self.mapping.decode(diff, self.scale if scale is None else scale,
                                   self.slice_w if slice_w is None else slice_w)

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

    def stamp(self) -> tuple:
        """What the conductances read now depend on: each cell tensor (held weakly) with its in-place
        version, and the design. Every change of the cells makes new tensors or bumps a version, so an
        unchanged stamp (:meth:`unchanged`) means the same conductances."""
        return (self.config, tuple((weakref.ref(t), t._version) for t in (getattr(self, n) for n in CELLS)))

    def unchanged(self, stamp: tuple) -> bool:
        """Whether the cells are as they were when :meth:`stamp` gave ``stamp``."""
        config, cells = stamp
        return config is self.config and all(ref() is getattr(self, n) and getattr(self, n)._version == v
                                              for n, (ref, v) in zip(CELLS, cells))

    def nominal(self) -> tuple[Tensor, Tensor]:
        """Noise-free programmed targets (rounded to levels), shape (1, S, O, K) each."""
        if self._nominal is None:
            m = self.mapped()
            levels = get_model(self.config.device, self.config.variability).levels()
            dev = self.weights().device
            self._nominal = (round_to_levels(m.pos, levels)[0][None].to(dev),
                             round_to_levels(m.neg, levels)[0][None].to(dev))
        return self._nominal

    def conductances(self, pos: Tensor, neg: Tensor, at_t0: tuple[Tensor, Tensor] | None = None,
                     through_wires: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """(G+ - G-) as the array sees it, with IR drop, and the read-noise variance weights. ``at_t0``: the
        same cells' conductances when programmed, for read-noise models that depend on them (None: as read).
        ``through_wires``: ``pos`` and ``neg`` through the wires (:meth:`ir_transfer`) where already known.

        Reference columns are broadcast to their tile's columns; IR drop is applied to the weight cells
        (the two halves of a differential pair each as their own tile), not to reference columns.
        """
        out = self.geometry.out_features
        wired = bool(self.config.array.wire_resistance)
        if wired:
            pos = through_wires[0] if through_wires is not None else self.ir_transfer(pos)
        if self.mapping.reference:
            neg = self.mapping.expand_neg(neg, out)
        elif wired:
            neg = through_wires[1] if through_wires is not None else self.ir_transfer(neg)
        d = self.config.device
        w2 = None
        if d.read_noise:
            pos0, neg0 = at_t0 if at_t0 is not None else (None, None)
            if neg0 is not None:
                neg0 = self.mapping.expand_neg(neg0, out)
            # the variance of the transferred cells: IR drop scales each cell's noise current as its signal
            # (the exact solve's sneak terms can leave a conductance-less cell slightly negative)
            w2 = get_read_noise(d.read_noise_model).pair_variance(pos.clamp_min(0) if wired else pos,
                                                                  neg.clamp_min(0) if wired else neg,
                                                                  d, pos0, neg0)
        return pos - neg, w2

    def read(self, chips: Tensor | slice | None) -> tuple[Tensor, Tensor | None]:
        """:meth:`conductances` of ``chips`` as read now (on demand: their cells are written first). On
        resistive wires the stored chips' transfers are kept between reads while their cells are unchanged:
        the exact solve costs much more than a pass (nvcim.circuits.irdrop)."""
        pos, neg = self.effective(chips)
        at_t0 = self.programmed(chips) if self.drift_pos.numel() else None  # without drift: as programmed
        wires = None
        if self.config.array.wire_resistance and not self.on_demand:
            wires = self._through_wires(chips, pos, neg)
        return self.conductances(pos, neg, at_t0, wires)

    def _through_wires(self, chips: Tensor | slice | None, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`ir_transfer` of the stored chips ``chips`` whose effective cells are ``pos``/``neg``, from
        the cache where those chips were solved since their cells last changed."""
        n = self.n_chips
        if self._ir is None or not self.unchanged(self._ir.stamp):
            self._ir = _IRCache(self.stamp(), torch.empty_like(self.g_pos), torch.empty_like(self.g_neg),
                                torch.zeros(n, dtype=torch.bool))
        c = self._ir
        ids = chips.cpu() if isinstance(chips, Tensor) else torch.arange(n)[chips if chips is not None else
                                                                               slice(None)]
        todo = ~c.done[ids]
        if bool(todo.any()):
            at = todo.nonzero().squeeze(-1)
            dev = at.to(pos.device)
            c.pos[ids[at].to(c.pos.device)] = self.ir_transfer(pos[dev])
            if not self.mapping.reference:
                c.neg[ids[at].to(c.neg.device)] = self.ir_transfer(neg[dev])
            c.done[ids[at]] = True
        where = ids.to(c.pos.device)
        return c.pos[where], c.neg[where]

    def ir_transfer(self, g: Tensor) -> Tensor:
        """The conductances ``g`` (..., O, K) as the columns see them through the wires: the IR-drop transfer
        matrix (S) of the configured solver (``array.ir_solver``); ``g`` itself on ideal wires."""
        a = self.config.array
        return self.geometry.ir_transfer(g, a.wire_resistance, a.ir_solver) if a.wire_resistance else g

    def ir_attenuation(self, g: Tensor) -> Tensor:
        """The factor a with a * g = :meth:`ir_transfer` (g), cell by cell; 1 where a cell conducts nothing
        (its transfer there is the sneak coupling alone) and on ideal wires."""
        if not self.config.array.wire_resistance:
            return torch.ones_like(g)
        t = self.ir_transfer(g)
        live = g > 0
        return torch.where(live, t / torch.where(live, g, torch.ones_like(g)), torch.ones_like(g))

    # ---- the digital registers ------------------------------------------------------------------
    def set_output_affine(self, gain: Tensor, offset: Tensor) -> None:
        """Per-chip, per-column y -> gain y + offset, ``(N, O)`` each."""
        registers.check_affine(self.name, gain, offset, self.n_chips, self.geometry.out_features)
        self.tune_gain = gain.to(self.tune_gain).clone()
        self.tune_offset = offset.to(self.tune_offset).clone()

    def tuned(self) -> bool:
        """Whether a method has set the output registers away from y -> y."""
        return bool(self.tune_gain.numel()) and bool((self.tune_gain != 1).any() or (self.tune_offset != 0).any())

    def set_sram(self, mask: Tensor, weights: Tensor) -> None:
        """Sparse SRAM weights: ``mask`` boolean ``(O, K)`` (shared) or ``(N, O, K)``, ``weights`` ``(N, O, K)``."""
        registers.check_sram(self.name, mask, weights, self.n_chips, self.geometry.out_features, self.geometry.k)
        w = self.weights()
        self.sram_mask = mask.to(w.device)
        self.sram_w = weights.to(w.device, w.dtype)

    def sram(self) -> tuple[Tensor, Tensor] | None:
        return (self.sram_mask.clone(), self.sram_w.detach().clone()) if self.sram_w.numel() else None

    # ---- keeping a state ------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, tuple[Tensor, int]]:
        """References to the state a method may change, with their versions: every change makes new tensors
        (rewrite, remap_rows, program, the registers' setters), so a checkpoint costs no memory;
        :meth:`restore` refuses one whose tensors were changed in place since."""
        return {k: (t, t._version) for k in STATE if (t := getattr(self, k)).numel() or k.startswith("sram")}

    def restore(self, saved: dict[str, tuple[Tensor, int]], chips: Tensor) -> Tensor:
        """Put ``chips`` (N,) (bool, on this crossbar's device) back into ``saved``; returns the cells
        restored per chip."""
        rewritten = torch.zeros(self.n_chips, dtype=torch.long)
        for k, (old, version) in saved.items():
            if old._version != version:
                raise NvcimError("restore: the checkpoint's state was changed in place since; take a new one")
            now = getattr(self, k)
            if now is old or k in ("sram_w", "sram_mask"):
                continue  # the SRAM below, as a pair
            sel = chips.to(now.device).view(-1, *([1] * (now.dim() - 1)))
            if k in ("g_pos", "g_neg"):
                rewritten += ((now != old) & sel).flatten(1).sum(1).cpu()
            setattr(self, k, torch.where(sel, old, now))
        (m0, _), (w0, _) = saved["sram_mask"], saved["sram_w"]
        if self.sram_w is not w0 or self.sram_mask is not m0:
            self.sram_mask, self.sram_w = registers.merged_sram(m0, w0, self.sram_mask, self.sram_w.detach(), chips)
        return rewritten

    # ---- saving ---------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Buffers change shape when chips are programmed: take the saved shapes before the copy.
        if prefix + "row_perm" not in state_dict and prefix + "g_pos" in state_dict:  # saved before remapping
            g = state_dict[prefix + "g_pos"]
            state_dict[prefix + "row_perm"] = torch.arange(g.shape[-1]).expand(g.shape[0], -1).clone()
        take_saved_shapes(self, state_dict, prefix)
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

