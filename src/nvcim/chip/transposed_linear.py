"""Analog GPT-2-style ``Conv1D``: a linear layer whose weight is stored transposed, ``(in, out)``.

Hugging Face ``transformers`` builds the attention and MLP projections of GPT-2, GPT-J's predecessors, DistilGPT-2
and others with ``transformers.pytorch_utils.Conv1D`` (``y = x @ W + b``, ``W`` of shape ``(nx, nf)``), not
``nn.Linear``: 92 % of a GPT-2's matrix weights. nvcim does not depend on ``transformers``, so the module is
recognised by its structure (:func:`is_transposed_linear`) rather than its type. The arrays hold ``W.T`` exactly as
they hold an ``nn.Linear``'s weight; the layer keeps the module's own Parameter, in its own layout, so state_dict
keys and shapes stay those of the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config.schema import ChipConfig
from .layers import AnalogLayer
from .linear import LinearProduct
from .registry import register_structural


def is_transposed_linear(module: nn.Module) -> bool:
    """A GPT-2 ``Conv1D``: class name ``Conv1D``, no children, an int ``nf``, a 2-D ``weight`` of shape
    (in, nf) and a bias of shape (nf,) or none."""
    w, nf = getattr(module, "weight", None), getattr(module, "nf", None)
    b = getattr(module, "bias", None)
    return (type(module).__name__ == "Conv1D" and isinstance(nf, int) and isinstance(w, Tensor) and w.dim() == 2
            and w.shape[1] == nf and (b is None or (isinstance(b, Tensor) and tuple(b.shape) == (nf,)))
            and not list(module.children()))


@register_structural(is_transposed_linear)
class AnalogTransposedLinear(LinearProduct, AnalogLayer):
    """Analog ``Conv1D`` (GPT-2): the arrays hold the (out, in) matrix ``weight.T``."""

    def __init__(self, digital: nn.Module, config: ChipConfig, name: str) -> None:
        weight: nn.Parameter = digital.weight  # type: ignore[assignment]
        bias: nn.Parameter | None = digital.bias  # type: ignore[assignment]
        shell = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device="meta")
        shell.weight, shell.bias = weight, bias  # type: ignore[assignment]  # the module's own, (in, out) kept
        super().__init__(shell, config, name)

    def matrix_shape(self) -> tuple[int, int]:
        k, out = self.weight.shape
        return out, k

    def as_matrix(self, t: Tensor) -> Tensor:
        return t.transpose(-1, -2)

    def from_matrix(self, m: Tensor) -> Tensor:
        return m.transpose(-1, -2)

    def digital_with(self, x: Tensor, w: Tensor) -> Tensor:
        y = torch.matmul(x, w)
        return y + self.bias if self.bias is not None else y
