"""Probe passes of the ideal model on one or two images, which a chip pass plans with: whether every
analog layer's input follows the batch, and how much activation memory one chip-image takes."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import NvcimError
from .layers import AnalogLayer

if TYPE_CHECKING:
    from .model import AnalogModel


def check_batch_inputs(model: AnalogModel, x: Tensor) -> None:
    """Raise a clear error if an analog layer multiplies a tensor that does not follow the batch (a learned
    parameter, as DETR's or a Perceiver's queries): the ideal model is run on 1 and on 2 images (once per
    input shape), and every analog layer's input must change shape with them. A chip pass carries each
    chip's activations along the batch dimension, so a product of a batch-free tensor has nowhere to put
    its chips: it would mix them, or fail deep inside the model."""
    seen: dict[str, list[list[tuple[int, ...]]]] = {}
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.net.modules()]
    for m, _, _ in saved:  # the user's hooks (and Chip.infer's captures) do not see the probe passes
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    for lay in model.analog_layers():  # gone with the restore of the saved hooks below
        lay.register_forward_hook(lambda m, i, o, n=lay.layer_name: seen[n][-1].append(tuple(i[0].shape))
                                  if i and isinstance(i[0], Tensor) else None)
    try:
        for probe in (x[:1], torch.cat([x[:1], x[:1]])):
            for lay in model.analog_layers():
                seen.setdefault(lay.layer_name, []).append([])
            model.digital(probe)
    finally:
        for m, fwd, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = fwd, pre
    for name, (one, two) in seen.items():
        same = [s for s, t in zip(one, two) if s == t]
        if len(one) == len(two) and same:
            raise NvcimError(
                f"analog layer '{name}' multiplies a tensor that does not depend on the batch (shape "
                f"{same[0]} for 1 and for 2 images: a learned parameter, such as DETR's or a Perceiver's "
                f"queries). A chip pass carries each chip along the batch dimension, so this product cannot "
                f"be given one without mixing chips. Leave it digital: convert(..., filter_fn=lambda m, n: "
                f"n != '{name}'), or apply the layer to a batch-shaped tensor (queries expanded to the batch)")


@dataclass(frozen=True)
class ActivationProfile:
    """What one image on one chip takes in a chip pass, from a probe pass of the ideal model.

    ``peak_bytes``: the activation memory live at the pass's peak: every module's output (all kept, as a
    network with skip connections may keep them), plus the largest analog layer's transient (its tile
    outputs and read-noise operands, freed before the next layer runs). ``work_elements``: the elements that
    the pass's kernels write, every layer's transient counted, which measures the work a compile repays."""

    peak_bytes: float
    work_elements: float


def activation_profile(model: AnalogModel, x: Tensor) -> ActivationProfile:
    """The :class:`ActivationProfile` of input ``x`` (a probe pass on its first image)."""
    live = transient = work = 0.0
    hooks = []

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        nonlocal live, transient, work
        if not isinstance(out, Tensor):
            return
        n = out[0].numel()
        live += n
        work += n
        if isinstance(mod, AnalogLayer):
            noisy = 3 if mod.config.device.read_noise else 1
            t = n * (mod.row_tiles * mod.n_slices * (noisy + 2) + 1) + 3 * inp[0][0].numel()
            transient = max(transient, t)
            work += t
    for m in model.net.modules():
        if isinstance(m, AnalogLayer) or not list(m.children()):  # a layer owns its crossbar
            hooks.append(m.register_forward_hook(hook))
    try:
        model.digital(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return ActivationProfile(4.0 * (live + transient), 4.0 * work / 6.0)
