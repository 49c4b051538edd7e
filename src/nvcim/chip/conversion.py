"""``convert``: swap a model's matrix-product modules for analog layers holding N programmed chips.

It is a module swap with a config and a filter, in the manner of torchao's ``quantize_``: every module for
which :mod:`.registry` has an analog layer, and which ``filter_fn`` accepts, is replaced in place; the
:class:`ConversionReport` names what was converted and every matrix product left digital, with the reason.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ChipConfig, load_config, preset
from ..devices import has_drift
from ..errors import ConfigError, ConversionError
from .conv2d import Conv2dProduct
from .layers import AnalogLayer
from .model import AnalogModel, Runtime
from .registry import Unsupported, converter_for, digital_reason, non_matrix_kind
from .tail import attach_tails

FilterFn = Callable[[nn.Module, str], bool]
log = logging.getLogger("nvcim")


FILTERED = "excluded by filter_fn"


@dataclass
class ConversionReport:
    """What :func:`convert` did: ``converted`` (qualified name, module type) and ``digital`` (qualified name,
    module type, reason) for every module whose matrix products stay digital, whatever the reason: excluded by
    ``filter_fn``, an option no analog layer models, or a module kind that nvcim does not know (any module
    holding a parameter of two or more dimensions that no analog layer reads, unless it is a lookup table, a
    normalisation or a broadcast table such as a positional embedding).

    ``analog_weights`` counts the matrix weights on the chip and ``digital_weights`` those left digital, by
    module name (each Parameter once, tied ones too); ``analog_share`` is the fraction on the chip."""

    converted: list[tuple[str, str]] = field(default_factory=list)
    digital: list[tuple[str, str, str]] = field(default_factory=list)
    analog_weights: int = 0
    digital_weights: dict[str, int] = field(default_factory=dict)

    @property
    def analog_share(self) -> float:
        """Fraction of the model's matrix weights that are on the chip (1.0: all of them)."""
        total = self.analog_weights + sum(self.digital_weights.values())
        return self.analog_weights / total if total else 1.0

    def share_line(self) -> str:
        """One line: the analog share of the matrix weights, with the counts."""
        total = self.analog_weights + sum(self.digital_weights.values())
        return (f"{100 * self.analog_share:.1f} % of the matrix weights on the chip ({self.analog_weights:,} of "
                f"{total:,})")

    def unintended(self) -> list[tuple[str, str, str]]:
        """The digital entries that ``filter_fn`` did not ask for."""
        return [d for d in self.digital if d[2] != FILTERED]

    def unintended_share(self) -> float:
        """Fraction of the matrix weights left digital that ``filter_fn`` did not ask for."""
        total = self.analog_weights + sum(self.digital_weights.values())
        return sum(self.digital_weights.get(n, 0) for n, _, _ in self.unintended()) / total if total else 0.0

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for _, k in self.converted:
            kinds[k] = kinds.get(k, 0) + 1
        text = (f"converted {len(self.converted)} layers (" + ", ".join(f"{n} {k}" for k, n in kinds.items())
                + f"): {self.share_line()}")
        return text + ("; left digital: " + self.digital_text() if self.digital else "")

    def digital_text(self) -> str:
        """Every module left digital, with its reason and its share of the matrix weights."""
        total = max(1, self.analog_weights + sum(self.digital_weights.values()))

        def weights(name: str) -> str:
            n = self.digital_weights.get(name, 0)
            return f"; {n:,} weights, {100 * n / total:.1f} %" if n else ""

        return "; ".join(f"{n or '(the model)'} ({k}: {why}{weights(n)})" for n, k, why in self.digital)

    def to_dict(self) -> dict[str, Any]:
        return {"converted": [list(c) for c in self.converted], "digital": [list(d) for d in self.digital],
                "analog_weights": self.analog_weights, "digital_weights": dict(self.digital_weights),
                "analog_share": self.analog_share}


def _count_weights(model: nn.Module, report: ConversionReport) -> None:
    """Fill ``report``'s weight counts: the analog layers' weights, and every other parameter of two or more
    dimensions that is not a lookup table, a normalisation's scale or a broadcast table, attributed to the
    nearest module already named in ``report.digital`` or else added there as a module kind nvcim does not
    know. Each Parameter is counted once (a tied weight on the chip is on the chip)."""
    seen: set[int] = set()
    for lay in (m for m in model.modules() if isinstance(m, AnalogLayer)):
        if id(lay.weight) not in seen:
            seen.add(id(lay.weight))
            report.analog_weights += lay.weight.numel()
    named = [n for n, _, _ in report.digital]
    loose: dict[str, tuple[nn.Module, list[str]]] = {}  # modules nvcim does not know, with their parameters
    for name, mod in model.named_modules():
        if isinstance(mod, AnalogLayer) or non_matrix_kind(mod) is not None:
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen or p.dim() < 2 or (p.dim() >= 3 and p.shape[0] == 1):
                continue  # a (1, ..., E) parameter is broadcast over the batch: a positional table, a token
            seen.add(id(p))
            owner = next((n for n in named if n == "" or name == n or name.startswith(n + ".")), None)
            if owner is None:
                owner = name
                loose.setdefault(name, (mod, []))[1].append(f"{pname} {tuple(p.shape)}")
            report.digital_weights[owner] = report.digital_weights.get(owner, 0) + p.numel()
    for name, (mod, params) in loose.items():
        if list(mod.children()):  # a container's own parameter, outside any layer
            why = (f"holds {', '.join(params)} outside any layer, counted as matrix weights multiplied "
                   f"digitally (a learned input such as queries is not one: then the share overstates)")
        else:
            why = f"a module kind with no analog layer: its {', '.join(params)} is multiplied digitally"
        report.digital.append((name, type(mod).__name__, why))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    report.digital.sort(key=lambda d: order.get(d[0], -1))  # in module order


def resolve_config(config: ChipConfig | str | Path) -> ChipConfig:
    """A ChipConfig from a config, a preset name or a config file path."""
    if isinstance(config, ChipConfig):
        return config
    p = Path(str(config))
    if p.suffix.lower() in (".toml", ".json", ".yaml", ".yml") or p.is_file():
        return load_config(p)
    return preset(str(config))


Swapped = list[tuple[nn.Module, str, nn.Module]]  # (parent, attribute, the original module) per swap


def _swap(module: nn.Module, config: ChipConfig, filter_fn: FilterFn | None, report: ConversionReport,
          swapped: Swapped, prefix: str = "") -> None:
    for name, child in list(module.named_children()):
        fqn = f"{prefix}.{name}" if prefix else name
        kind = type(child).__name__
        if isinstance(child, AnalogLayer):
            continue
        make = converter_for(child)
        if make is not None:
            if filter_fn is not None and not filter_fn(child, fqn):
                report.digital.append((fqn, kind, FILTERED))
                continue
            try:
                setattr(module, name, make(child, config, fqn))
                swapped.append((module, name, child))
            except Unsupported as e:
                report.digital.append((fqn, kind, str(e)))  # and not its parts, as below
                continue
            report.converted.append((fqn, kind))
        elif (why := digital_reason(child)) is not None:
            report.digital.append((fqn, kind, why))  # and not its parts: they would never run
        else:
            _swap(child, config, filter_fn, report, swapped, fqn)


def convert(
    model: nn.Module,
    config: ChipConfig | str | Path,
    chips: int = 100,
    seed: int = 0,
    filter_fn: FilterFn | None = None,
    runtime: Runtime | None = None,
    strict: bool = False,
    inplace: bool = False,
) -> AnalogModel:
    """Put ``model`` on ``chips`` simulated chips described by ``config`` (a ChipConfig, preset or file).

    ``inplace=False`` (the default) converts a deep copy and leaves ``model`` as it was; ``inplace=True``
    swaps ``model``'s own modules (no copy of its weights: for a model too large to hold twice).
    Every ``nn.Linear`` and ``nn.Conv2d`` at any depth for which ``filter_fn(module, qualified_name)`` is
    true (all, by default) is swapped for an analog layer (also ``nn.Conv1d``,
    ``nn.ConvTranspose2d``, ``nn.MultiheadAttention``, ``nn.LSTM``/``GRU``/``RNN`` and GPT-2's ``Conv1D``);
    everything else stays digital. ``.report`` of the result (a :class:`ConversionReport`) names every module
    whose matrix products stay digital, with its share of the matrix weights, and states the analog share.

    More than 1 % of the matrix weights left digital by anything but ``filter_fn`` logs a WARNING on the
    "nvcim" logger (what ``filter_fn`` excluded is logged at INFO, with its share); ``strict=True`` instead
    raises :class:`~nvcim.errors.ConversionError` naming every module left digital that ``filter_fn`` did
    not exclude (and leaves the model as it was). All chips are programmed now; chip ``k``
    depends only on ``(config, seed, k)``. Returns the wrapper whose forward gives ``(chips, B, ...)``. The
    model is put in eval mode.
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
    if not isinstance(strict, bool):
        raise ConfigError("strict", strict, "True or False")
    if not isinstance(inplace, bool):
        raise ConfigError("inplace", inplace, "True or False")
    if not inplace:
        try:
            model = copy.deepcopy(model)
        except Exception as e:  # a module holding something that cannot be copied (an open file, a lock)
            raise ConversionError(f"the model could not be copied ({type(e).__name__}: {e}); pass "
                                  "inplace=True to convert it in place") from e
    report = ConversionReport()
    swapped: Swapped = []
    _swap(model, cfg, filter_fn, report, swapped)
    _count_weights(model, report)
    if not report.converted or (strict and report.unintended()):
        for parent, name, original in reversed(swapped):  # the user's model as it was
            setattr(parent, name, original)
        if not report.converted:
            raise ConversionError("nothing to convert: the model has no layer kind with an analog layer"
                                  + (" that filter_fn accepts" if filter_fn else "")
                                  + ("; " + report.summary() if report.digital else ""))
        raise ConversionError("strict conversion: these modules' matrix products would stay digital: "
                              + "; ".join(f"{n or '(the model)'} ({k}: {why})" for n, k, why in report.unintended())
                              + ". Exclude them on purpose with filter_fn, or convert without strict=True")
    if report.unintended_share() > 0.01:
        log.warning(f"only {report.share_line()}: the rest runs digitally, so results are not the chip's "
                    f"alone. Left digital: {report.digital_text()}")
    elif report.digital:
        log.info(report.summary())
    model.eval()
    attach_tails(model, Conv2dProduct)  # ReLU / max pooling right after a convolution: fused into its epilogue
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
        m = lay.crossbar.mapped()
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
