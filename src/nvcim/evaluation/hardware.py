"""Hardware cost beside accuracy: arrays, cells, SRAM, programming, and a closed-form energy/latency/area.

The estimate is first order, in the style of NeuroSim/ISAAC, with the per-operation constants of
``config.cost`` (:class:`~nvcim.config.CostConfig`, each default cited there). Per analog layer, with K weight
rows, N output columns, S bit slices, arrays of R x C cells and P input vectors per inference (1 for a
Linear layer, the number of output positions for a convolution):

- physical columns per row tile: 2SN (differential pairs) or N + ceil(N/C) (offset: one reference column per
  column tile); arrays = T x ceil(columns / C), with T row tiles;
- utilisation = K x columns / (arrays x R x C);
- ADC conversions = P T N S (the pair's currents are subtracted in analog; one conversion per logical column,
  slice and row tile, as the simulator digitises them); DAC drives = P K x (arrays per row tile);
- cell reads = P K x columns; digital adds = P N (T S - 1) for partial sums and shift-and-add;
- energy = conversions x E_adc(b) + drives x E_dac(b) + cell reads x E_cell + adds x E_add + SRAM reads,
  with E_adc(b) = E_adc(8) 2^(b-8) and E_dac(b) = E_dac(1) 2^(b-1) (converter energy roughly doubles per bit at
  these resolutions; thermal-noise-limited ADCs scale closer to 4^b, so high-resolution figures are optimistic);
- latency: the arrays of a layer work in parallel, layers and input vectors in sequence (no pipelining,
  no weight replication): P x max(t_read, conversions per array per read / (ADCs per array x rate));
- area: cells x 4F^2 + ADCs + DACs (one per row of each array) + SRAM. Periphery beyond converters (drivers,
  sense amplifiers, buffers, routing) is not counted, so the area is a lower bound.
- programming (per chip): one write step per cell plus the write-verify pulses, in series (an upper bound;
  real chips program rows in parallel); pulse energy V^2 g_max t_pulse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..chip.layers import AnalogLayer
from ..chip.model import AnalogModel

SRAM_WEIGHT_BYTES = 2  # a digital (RSA) weight is stored in 16 bits
REGISTER_BYTES = 4  # one 16-bit gain and one 16-bit offset per tuned column


@dataclass
class LayerCost:
    """Cost of one analog layer; energies in pJ, times in ns, areas in mm^2."""

    name: str
    weights: int
    arrays: int
    cells: int
    cells_per_weight: float
    utilisation: float
    mvms: int  # input vectors per inference
    adc_conversions: int
    dac_drives: int
    digital_adds: int
    sram_bytes: float
    energy_pj: float
    latency_ns: float
    area_mm2: float


@dataclass
class HardwareCost:
    """Per-layer and total cost of one chip running one inference, plus programming cost."""

    layers: list[LayerCost]
    write_verify_pulses: float = 0.0
    programming_time_s: float = 0.0
    programming_energy_uj: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(x) for x in self.layers], "totals": self.totals,
                "write_verify_pulses": self.write_verify_pulses, "programming_time_s": self.programming_time_s,
                "programming_energy_uj": self.programming_energy_uj}

    def table(self) -> str:
        head = f"{'layer':16s} {'arrays':>6s} {'cells':>9s} {'c/w':>4s} {'util':>5s} {'energy nJ':>10s} " \
               f"{'latency us':>10s} {'area mm2':>9s}"
        rows = [head] + [f"{x.name[:16]:16s} {x.arrays:6d} {x.cells:9d} {x.cells_per_weight:4.1f} "
                         f"{x.utilisation:5.2f} {x.energy_pj / 1e3:10.3f} {x.latency_ns / 1e3:10.2f} "
                         f"{x.area_mm2:9.4f}" for x in self.layers]
        t = self.totals
        rows.append(f"{'total':16s} {int(t['arrays']):6d} {int(t['cells']):9d} {t['cells_per_weight']:4.1f} "
                    f"{t['utilisation']:5.2f} {t['energy_pj'] / 1e3:10.3f} {t['latency_ns'] / 1e3:10.2f} "
                    f"{t['area_mm2']:9.4f}")
        return "\n".join(rows)


def _layer_cost(layer: AnalogLayer, positions: int) -> LayerCost:
    cfg = layer.config
    cc, a = cfg.cost, cfg.array
    n, k, s, t = layer.out_features, layer.k, layer.n_slices, layer.row_tiles
    cols = layer.mapping.array_columns(n, s)
    arrays_per_row_tile = math.ceil(cols / a.cols)
    arrays = t * arrays_per_row_tile
    cells = k * cols
    adc_bits = cfg.circuit.adc_bits or cc.unmodelled_adc_bits
    dac_bits = cfg.circuit.dac_bits or cc.unmodelled_dac_bits
    e_adc = cc.adc_energy_pj * 2.0 ** (adc_bits - 8)
    e_dac = cc.dac_energy_fj * 1e-3 * 2.0 ** (dac_bits - 1)
    conversions = positions * t * n * s
    drives = positions * k * arrays_per_row_tile
    adds = positions * n * (t * s - 1)
    mask = layer.crossbar.sram_mask  # (O, K) shared, or (N, O, K) per chip: count per chip
    sram_weights = float(mask.sum()) / (mask.shape[0] if mask.dim() == 3 else 1) if mask.numel() else 0.0
    tuned = layer.crossbar.tuned()
    # a per-chip sparse table (rsa 'faults') also stores each entry's position within the layer
    addr_bytes = math.ceil(math.log2(max(2, layer.out_features * layer.k)) / 8) if mask.dim() == 3 else 0
    sram_bytes = sram_weights * (SRAM_WEIGHT_BYTES + addr_bytes) + (n * REGISTER_BYTES if tuned else 0)
    energy = (conversions * e_adc + drives * e_dac + positions * cells * cc.cell_read_energy_fj * 1e-3
              + adds * cc.digital_add_pj + positions * sram_bytes * cc.sram_read_pj_per_byte)
    conv_per_read = math.ceil(t * n * s / arrays)
    t_cycle = max(cc.array_read_ns, conv_per_read / (cc.adcs_per_array * cc.adc_rate_gsps))
    area_um2 = (arrays * a.rows * a.cols * 4 * (cc.feature_nm * 1e-3) ** 2
                + arrays * cc.adcs_per_array * cc.adc_area_mm2 * 1e6 * 2.0 ** (adc_bits - 8)
                + arrays * a.rows * cc.dac_area_um2 * 2.0 ** (dac_bits - 1) + sram_bytes * cc.sram_area_um2_per_byte)
    return LayerCost(layer.layer_name, n * k, arrays, cells, cells / (n * k), cells / (arrays * a.rows * a.cols),
                     positions, conversions, drives, adds, sram_bytes, energy, positions * t_cycle, area_um2 * 1e-6)


def hardware_cost(model: AnalogModel, example: Tensor, write_verify_pulses: float = 0.0) -> HardwareCost:
    """Cost of ``model`` on one chip for one input like ``example`` (one input, or a batch whose first
    item is used); ``write_verify_pulses`` per chip come from a recovery :class:`~nvcim.methods.Cost`."""
    x = example[:1] if example.dim() > 1 else example[None]
    io = model.digital_layer_io(x)
    layers = []
    for lay in model.analog_layers():
        out = io[lay.layer_name][1]
        positions = max(1, out.numel() // lay.out_features)
        layers.append(_layer_cost(lay, positions))
    cfg = model.config
    cells = sum(x.cells for x in layers)
    weights = sum(x.weights for x in layers)
    arrays = sum(x.arrays for x in layers)
    cap = sum(x.arrays for x in layers) * cfg.array.rows * cfg.array.cols
    steps = cells + write_verify_pulses
    pulse_pj = cfg.cost.write_voltage ** 2 * cfg.device.g_max * cfg.cost.write_pulse_ns * 1e-9 * 1e12
    totals = {"arrays": float(arrays), "cells": float(cells), "weights": float(weights),
              "cells_per_weight": cells / max(1, weights), "utilisation": cells / max(1, cap),
              "adc_conversions": float(sum(x.adc_conversions for x in layers)),
              "dac_drives": float(sum(x.dac_drives for x in layers)),
              "digital_adds": float(sum(x.digital_adds for x in layers)),
              "sram_bytes": sum(x.sram_bytes for x in layers),
              "energy_pj": sum(x.energy_pj for x in layers), "latency_ns": sum(x.latency_ns for x in layers),
              "area_mm2": sum(x.area_mm2 for x in layers)}
    return HardwareCost(layers, write_verify_pulses, steps * cfg.cost.write_step_us * 1e-6,
                        steps * pulse_pj * 1e-6, totals)


def sram_bytes(model: AnalogModel) -> float:
    """SRAM bytes that recovery methods added to one chip (RSA weights and tuned column registers)."""
    with torch.no_grad():
        return sum(_layer_cost(lay, 1).sram_bytes for lay in model.analog_layers())
