"""An analog layer's DAC and ADC: input quantisation, and the ranges calibrated on data (the one owner of
the converter ranges: ``dac_fs``, ``dac_signed``, ``adc_fs``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..circuits import get_dac
from ..config.schema import ChipConfig
from ..errors import NvcimError
from .compiling import dac_kernel
from .geometry import TileGeometry


class Converters(nn.Module):
    """The DAC on a layer's inputs and the calibration of its DAC and ADC ranges: ``dac_fs`` the input full
    scale (activation units), ``dac_signed`` whether inputs may be negative, ``adc_fs`` the ADC full scale
    per row tile, slice (and column) in signal units (input x siemens)."""

    dac_fs: Tensor
    dac_signed: Tensor
    adc_fs: Tensor

    def __init__(self, name: str, config: ChipConfig, geometry: TileGeometry, device: torch.device) -> None:
        super().__init__()
        self.layer_name, self.config, self.geometry = name, config, geometry
        self.register_buffer("dac_fs", torch.zeros((), device=device))
        self.register_buffer("dac_signed", torch.ones((), dtype=torch.bool, device=device))
        self.register_buffer("adc_fs", torch.zeros((), device=device))

    def reconfigure(self, config: ChipConfig, geometry: TileGeometry) -> None:
        self.config, self.geometry = config, geometry

    def reset(self, dac: bool) -> None:
        """Forget the calibrated ranges: the ADC's, and the DAC's too when ``dac``."""
        if dac:
            self.dac_fs.zero_()
        self.adc_fs = torch.zeros((), device=self.dac_fs.device)

    def set_input_range(self, full_scale: float) -> None:
        self.dac_fs = torch.tensor(float(full_scale), device=self.dac_fs.device, dtype=self.dac_fs.dtype)

    def apply_dac(self, x: Tensor, compiled: bool = False) -> Tensor:
        """The DAC on the layer's inputs; ``compiled``: in one fused pass (the same numbers) when no gradient
        is taken."""
        bits = self.config.circuit.dac_bits
        if not bits:
            return x
        if not bool(self.dac_fs > 0):
            raise NvcimError(f"{self.layer_name}: the DAC range is not calibrated: call model.calibrate(x) "
                             "or set circuit.dac_range")
        model = self.config.circuit.dac_key
        if compiled and not torch.is_grad_enabled():
            return dac_kernel(model, bits, bool(self.dac_signed))(x, self.dac_fs)
        return get_dac(model).quantize(x, self.dac_fs, bits, bool(self.dac_signed))

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

    def calibrate_input(self, x: Tensor, again: bool = False) -> None:
        """DAC range from inputs ``x``; ``again``: a further read in the same calibration pass (widen only)."""
        cc = self.config.circuit
        signed = torch.tensor(bool((x < 0).any()), device=self.dac_fs.device)
        fs = torch.tensor(cc.dac_range) if cc.dac_range else self._percentile(x.detach().abs())
        fs = fs.to(self.dac_fs).clamp_min(1e-12)
        self.dac_signed, self.dac_fs = (signed | self.dac_signed, torch.maximum(fs, self.dac_fs)) if again else (
            signed, fs)

    def input_full_scale(self) -> Tensor:
        """The input that drives a row fully: the DAC range, or 1 where managed reads normalise each input
        vector (:mod:`.managed_io`) or no range is calibrated."""
        if self.config.circuit.managed_io or not bool(self.dac_fs > 0):
            return torch.ones((), device=self.dac_fs.device)
        return self.dac_fs

    def signal_full_scale(self) -> Tensor:
        d = self.config.device
        return self.input_full_scale() * self.geometry.rows_per_tile * (d.g_max - d.g_min)

    def calibrate_output(self, y: Tensor, again: bool = False) -> None:
        cc = self.config.circuit
        if cc.adc_range:
            self.adc_fs = (cc.adc_range * self.signal_full_scale()).to(self.dac_fs).reshape(())
            return
        if cc.adc_range_cells:
            d = self.config.device
            self.adc_fs = (cc.adc_range_cells * (d.g_max - d.g_min) * self.input_full_scale()).to(
                self.dac_fs).reshape(())
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
        return bool(cc.adc_bits or cc.dac_bits or cc.adc_offset_sigma or cc.out_noise)

    def is_calibrated(self) -> bool:
        return bool(self.dac_fs > 0) or not self.needs_calibration()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        take_saved_shapes(self, state_dict, prefix)  # the ADC range's shape follows its calibration
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def take_saved_shapes(module: nn.Module, state_dict: dict[str, Tensor], prefix: str) -> None:
    """Give ``module``'s buffers the shapes of their saved values (they change when chips are programmed
    or converters calibrated), so that loading copies into place."""
    for name, buf in list(module._buffers.items()):
        if prefix + name in state_dict and buf is not None:
            module._buffers[name] = torch.empty_like(state_dict[prefix + name], device=buf.device)
