"""``convert``: swap a model's matrix-product modules for analog layers holding N programmed chips.

It is a module swap with a config and a filter, in the manner of torchao's ``quantize_``: every module for
which :mod:`.registry` has an analog layer, and which ``filter_fn`` accepts, is replaced in place; the
:class:`ConversionReport` names what was converted and every matrix product left digital, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ChipConfig, load_config, preset
from ..errors import ConfigError, ConversionError
from .conv2d import AnalogConv2d
from .layers import AnalogLayer
from .model import AnalogModel, Runtime
from .programming import has_drift
from .registry import Unsupported, converter_for, digital_reason
from .tail import attach_tails

FilterFn = Callable[[nn.Module, str], bool]
log = logging.getLogger("nvcim")


@dataclass
class ConversionReport:
    """What :func:`convert` did: ``converted`` (qualified name, module type) and ``digital`` (qualified name,
    module type, reason) for every matrix-product module it left digital."""

    converted: list[tuple[str, str]] = field(default_factory=list)
    digital: list[tuple[str, str, str]] = field(default_factory=list)

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for _, k in self.converted:
            kinds[k] = kinds.get(k, 0) + 1
        text = f"converted {len(self.converted)} layers (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")"
        if self.digital:
            text += "; left digital: " + "; ".join(f"{n} ({k}: {why})" for n, k, why in self.digital)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"converted": [list(c) for c in self.converted], "digital": [list(d) for d in self.digital]}


def resolve_config(config: ChipConfig | str | Path) -> ChipConfig:
    """A ChipConfig from a config, a preset name or a config file path."""
    if isinstance(config, ChipConfig):
        return config
    p = Path(str(config))
    if p.suffix.lower() in (".toml", ".json", ".yaml", ".yml") or p.is_file():
        return load_config(p)
    return preset(str(config))


def _swap(module: nn.Module, config: ChipConfig, filter_fn: FilterFn | None, report: ConversionReport,
          prefix: str = "") -> None:
    for name, child in list(module.named_children()):
        fqn = f"{prefix}.{name}" if prefix else name
        kind = type(child).__name__
        if isinstance(child, AnalogLayer):
            continue
        make = converter_for(child)
        if make is not None:
            if filter_fn is not None and not filter_fn(child, fqn):
                report.digital.append((fqn, kind, "excluded by filter_fn"))
                continue
            try:
                setattr(module, name, make(child, config, fqn))
            except Unsupported as e:
                report.digital.append((fqn, kind, str(e)))  # and not its parts, as below
                continue
            report.converted.append((fqn, kind))
        elif (why := digital_reason(child)) is not None:
            report.digital.append((fqn, kind, why))  # and not its parts: they would never run
        else:
            _swap(child, config, filter_fn, report, fqn)


def convert(
    model: nn.Module,
    config: ChipConfig | str | Path,
    chips: int = 100,
    seed: int = 0,
    filter_fn: FilterFn | None = None,
    runtime: Runtime | None = None,
) -> AnalogModel:
    """Put ``model`` on ``chips`` simulated chips described by ``config`` (a ChipConfig, preset or file).

    Every ``nn.Linear`` and ``nn.Conv2d`` at any depth for which ``filter_fn(module, qualified_name)`` is
    true (all, by default) is swapped **in place** for an analog layer; everything else stays digital, and
    ``.report`` of the result (a :class:`ConversionReport`, also logged when anything was left digital)
    names each matrix product that did. All chips are programmed now; chip ``k`` depends only on
    ``(config, seed, k)``. Returns the wrapper whose forward gives ``(chips, B, ...)``. The model is put in
    eval mode.
    """
    cfg = resolve_config(config)
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ConfigError("chips", chips, "an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", seed, "an integer")
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ConversionError(f"parameter '{name}' contains NaN or inf")
    report = ConversionReport()
    _swap(model, cfg, filter_fn, report)
    if not report.converted:
        raise ConversionError("nothing to convert: the model has no nn.Linear or nn.Conv2d layer"
                              + (" that filter_fn accepts" if filter_fn else "")
                              + ("; " + report.summary() if report.digital else ""))
    if any(why != "excluded by filter_fn" for *_, why in report.digital):
        log.info(report.summary())
    model.eval()
    attach_tails(model, AnalogConv2d)  # ReLU / max pooling right after a convolution: fused into its epilogue
    wrapper = AnalogModel(model, cfg, chips, seed, runtime or Runtime())
    wrapper.report = report
    wrapper.program(torch.arange(chips), on_demand=_cells_on_demand(wrapper))
    return wrapper.eval()


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (MemAvailable on CPU), or None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def state_bytes_per_chip(model: AnalogModel) -> int:
    """Bytes of programmed state per chip: conductance (4), fault code (1) and drift factor (4, if any) per
    cell, for both sides of every analog layer."""
    per_cell = 5 + (4 if has_drift(model.config.device) else 0)
    total = 0
    for lay in model.analog_layers():
        m = lay.mapped()
        total += (m.pos.numel() + m.neg.numel()) * per_cell
    return total


def _cells_on_demand(model: AnalogModel) -> bool:
    """Runtime.cells for this conversion, and a refusal, before allocating, of what cannot fit in memory
    (instead of dying of out-of-memory). Stored cells need the whole state once (each chunk is written into
    place) plus one chunk's temporaries (each within 32 MiB: a few hundred MiB at most); cells made on demand
    need one chip block's."""
    per, mode = state_bytes_per_chip(model), model.runtime.cells
    free = available_bytes(model.device)
    stored = model.chips * per + 2**29
    if mode == "auto":
        if free is None or stored <= 0.5 * free:
            return False
        log.info(f"{model.chips} chips need {stored / 2**30:.1f} GiB of cell state, more than half of the "
                 f"{free / 2**30:.1f} GiB free: cells are made for each chip block on demand (Runtime.cells)")
        mode = "on-demand"
    block = model.chip_block()
    need = (block * per if mode == "on-demand" else model.chips * per) + 2**29
    if free is not None and need > 0.9 * free:
        if mode == "on-demand":
            raise ConversionError(f"one block of {block} chips needs about {need / 2**30:.1f} GiB of cell "
                                  f"state but only {free / 2**30:.1f} GiB is free on {model.device}: lower "
                                  f"Runtime.chip_block")
        fit = max(1, int((0.9 * free - 2**29) // per))
        raise ConversionError(f"chips = {model.chips} needs about {need / 2**30:.1f} GiB to program "
                              f"({per / 2**20:.1f} MiB of state per chip) but only {free / 2**30:.1f} GiB is "
                              f"free on {model.device}: use at most about {fit} chips per run, or "
                              f"Runtime(cells='on-demand')")
    return mode == "on-demand"
