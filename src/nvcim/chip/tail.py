"""Digital tails: the ReLU and non-overlapping max pooling that directly follow an analog convolution.

On a chip these run in the digital periphery right after the ADC; in the simulator they are the model's own
modules, which run once per chip on activations that are many times the size of the input (a LeNet-5's
first convolution: 10 chips x 6 x 28 x 28 floats per image). Run separately, the epilogue, the reorder into
the activation layout, the ReLU and the pooling each pass over that memory (four passes, about a third of
a chip run's time on the CPU). :func:`attach_tails` lets the analog layer apply them inside its fused epilogue
instead, in one pass that writes only the pooled result.

The model's tree is kept: each absorbed module is wrapped in :class:`Absorbed`, which runs it as before
unless its input carries the mark of a layer that has already applied it. So digital runs, calibration,
training, hooked layers (``Chip.infer`` captures) and eager runs are unchanged, and ReLU and max pooling
are exact, so the fused result is the unfused one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

_MARK = "_nvcim_applied"  # attribute on a layer's output: the Absorbed modules already applied to it


@dataclass(frozen=True, eq=False)
class Tail:
    """What an analog convolution applies after its epilogue: ``ops`` in order, each ``"relu"`` or a max
    pooling window ``k`` (``k`` x ``k``, stride ``k``), and the :class:`Absorbed` wrappers they stand for
    (objects, not ids, so that a deep copy of the model keeps layer and wrappers paired)."""

    ops: tuple[str | int, ...]
    mods: tuple[nn.Module, ...]


class Absorbed(nn.Module):
    """A model module (ReLU or MaxPool2d) that the analog layer before it may apply in its fused epilogue.

    It has no state of its own (``inner`` has none either), so state_dict keys are those of the model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if any(m is self for m in getattr(x, _MARK, ())):
            return x
        return self.inner(x)


def _pool_window(m: nn.Module) -> int | None:
    """The window of a non-overlapping square max pooling without padding, or None."""
    if not isinstance(m, nn.MaxPool2d) or m.return_indices or m.ceil_mode:
        return None
    k, s, p, d = (v if isinstance(v, tuple) else (v, v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
    if k[0] != k[1] or s != k or p != (0, 0) or d != (1, 1):
        return None
    return int(k[0])


def _stateless(m: nn.Module) -> bool:
    return not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())


def attach_tails(net: nn.Module, layer_type: type) -> int:
    """Wrap the ReLU / max pooling modules that directly follow a ``layer_type`` module in an
    ``nn.Sequential`` (at most one of each, in either order) and set that layer's ``tail``. Idempotent;
    returns the number of layers given a tail."""
    n = 0
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for i, (_, layer) in enumerate(kids):
            if not isinstance(layer, layer_type) or getattr(layer, "tail", None) is not None:
                continue
            ops: list[str | int] = []
            mods: list[nn.Module] = []
            for name, m in kids[i + 1:i + 3]:
                inner = m.inner if isinstance(m, Absorbed) else m
                if isinstance(inner, nn.ReLU) and "relu" not in ops:
                    op: str | int = "relu"
                elif _pool_window(inner) is not None and not any(isinstance(o, int) for o in ops):
                    op = _pool_window(inner)  # type: ignore[assignment]
                else:
                    break
                if not _stateless(inner):
                    break
                wrapper = m if isinstance(m, Absorbed) else Absorbed(inner)
                setattr(seq, name, wrapper)
                ops.append(op)
                mods.append(wrapper)
            if ops:
                layer.tail = Tail(tuple(ops), tuple(mods))  # type: ignore[assignment]
                n += 1
    return n


def mark(out: Tensor, tail: Tail) -> Tensor:
    """Record on ``out`` that the modules of ``tail`` have been applied to it."""
    setattr(out, _MARK, tail.mods)
    return out


def apply_tail(z: Tensor, ops: tuple[str | int, ...], h: int, w: int) -> Tensor:
    """The tail on a layer output ``z`` (B, H W, c, O) in any memory layout -> (B, c, H', W', O), contiguous
    (the channels-last memory of the activation layout (B c, O, H', W')). Pooling drops trailing rows and
    columns that do not fill a window, as ``MaxPool2d`` does."""
    b, _, c, o = z.shape
    z = z.view(b, h, w, c, o)
    for op in ops:
        if op == "relu":
            z = torch.relu(z)
        else:
            k = int(op)
            hk, wk = z.shape[1] // k, z.shape[2] // k
            z = z[:, : hk * k, : wk * k].reshape(b, hk, k, wk, k, c, o).amax(dim=(2, 4))
    return z.permute(0, 3, 1, 2, 4).contiguous()
