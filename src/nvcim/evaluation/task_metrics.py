"""What a chip is scored on: a metric per task, behind one small interface.

A metric sees each batch's chip outputs ``(chips, B, ...)`` and targets ``(B, ...)`` and returns per-chip sums
and how many items they cover (images, tokens, pixels); :meth:`Metric.finish` turns the totals into one value per
chip. The ideal model is scored the same way, as one chip. Names (``metric=`` in :func:`nvcim.evaluate`,
``--metric`` on the command line):

- ``top1`` (default) and ``top5`` / ``topK``: classification accuracy, the fraction of items whose label is
  among the K largest outputs; outputs (chips, B, classes), labels (B,);
- ``perplexity``, ``token-ce`` (next-token cross-entropy, nats per token) and ``token-accuracy`` for language
  models: outputs (chips, B, L, vocab) are the logits at every position, targets (B, L) the input tokens;
  position t is scored on token t + 1 (a causal model's own inputs are its labels);
- ``mse`` and ``psnr`` (dB, signals in [0, 1]) for regression and reconstruction, outputs shaped as targets;
- a :class:`Metric` instance, or :func:`from_callable` for any per-example function.

Adding a metric is one class with ``@register``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NvcimError, ShapeError
from ..registry import Registry


class Metric:
    """Base class: ``name``, ``higher_is_better``, ``unit``; per-chip sums of a batch, and the final values."""

    name = ""
    higher_is_better = True
    unit = ""  # "%" for fractions shown as percentages

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        """Per-chip sums (chips,) float64 of this batch and the number of items they cover."""
        raise NotImplementedError

    def finish(self, total: Tensor, count: float) -> Tensor:
        """Per-chip values from the totals of every batch (default: the mean per item)."""
        return total / max(count, 1.0)

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """A differentiable training loss for this task on outputs (B, ...) of one model (training methods):
        the mean (or ``"sum"``) over examples of the example's loss."""
        raise NvcimError(f"metric '{self.name}' has no training loss: recovery by training needs one")

    def chip_loss(self, out: Tensor, target: Tensor) -> Tensor:
        """The loss of every chip's outputs (chips, B, ...) summed over chips, averaged over the B examples:
        each chip's trainable registers get their own gradient (rsa)."""
        n = out.shape[0]
        return self.loss(out.flatten(0, 1), target.repeat(n, *([1] * (target.dim() - 1))), "sum") / target.shape[0]

    def format(self, v: float) -> str:
        return f"{100 * v:.2f} %" if self.unit == "%" else f"{v:.4g}{(' ' + self.unit) if self.unit else ''}"


METRICS: Registry[Metric] = Registry("metric")
register = METRICS.register  # class decorator: the metric by its ``name``


def get_metric(metric: str | Metric | None) -> Metric:
    """A metric by name (see the module doc), an instance as it is, or ``top1`` for None."""
    if metric is None:
        return TopK(1)
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str):
        raise NvcimError(f"metric = {metric!r} is invalid: allowed a name ({', '.join(names())}) or a Metric")
    if (m := re.fullmatch(r"top(\d+)", metric)) and int(m.group(1)) >= 1:
        return TopK(int(m.group(1)))
    if metric not in METRICS:
        raise NvcimError(f"metric = {metric!r} is invalid: allowed {', '.join(names())} (topK for any K >= 1)")
    return METRICS.create(metric)


def names() -> list[str]:
    return ["top1", "top5", *METRICS.names()]


class TopK(Metric):
    """Fraction of items whose label is among the K largest outputs."""

    higher_is_better, unit = True, "%"

    def __init__(self, k: int = 1) -> None:
        self.k, self.name = k, f"top{k}"

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        if out.dim() != 3 or target.dim() != 1 or out.shape[1] != target.shape[0]:
            raise ShapeError(f"{self.name} needs classifier outputs (B, classes) and labels (B,), got outputs "
                             f"{tuple(out.shape[1:])} and labels {tuple(target.shape)}: choose the task's metric "
                             f"(metric=..., --metric; {', '.join(names())})")
        if self.k == 1:
            hit = out.argmax(-1) == target.view(1, -1)
        else:
            hit = (out.topk(min(self.k, out.shape[-1]), dim=-1).indices == target.view(1, -1, 1)).any(-1)
        return hit.sum(1).double().cpu(), float(target.shape[0])

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        return F.cross_entropy(out, target, reduction=reduction)


def _next_token(out: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Logits (chips, B, L-1, V) at positions 0..L-2 and the tokens (B, L-1) they predict."""
    if out.dim() != 4 or target.dim() != 2 or out.shape[1:3] != target.shape:
        raise ShapeError(f"{name} needs language-model logits (B, L, vocab) and tokens (B, L), got outputs "
                         f"{tuple(out.shape[1:])} and targets {tuple(target.shape)}")
    if target.shape[1] < 2:
        raise ShapeError(f"{name} needs sequences of at least 2 tokens, got {target.shape[1]}")
    return out[:, :, :-1], target[:, 1:]


def _token_ce(out: Tensor, target: Tensor, name: str) -> tuple[Tensor, float]:
    logits, nxt = _next_token(out, target, name)
    c = logits.shape[0]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), nxt.expand(c, -1, -1).reshape(-1),
                         reduction="none").view(c, -1)
    return ce.double().sum(1).cpu(), float(nxt.numel())


@register
class TokenCE(Metric):
    """Next-token cross-entropy, nats per token."""

    name, higher_is_better, unit = "token-ce", False, "nats/token"

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        return _token_ce(out, target, self.name)

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """Mean next-token cross-entropy per token (``"sum"``: summed over tokens, divided by the sequence's
        scored positions, so that it is the sum over sequences of their mean token loss)."""
        ce = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), target[:, 1:].reshape(-1), reduction="none")
        per_sequence = ce.view(target.shape[0], -1).mean(1)
        return per_sequence.sum() if reduction == "sum" else per_sequence.mean()


@register
class Perplexity(TokenCE):
    """exp(next-token cross-entropy) per chip, over every scored token."""

    name, unit = "perplexity", ""

    def finish(self, total: Tensor, count: float) -> Tensor:
        return torch.exp(total / max(count, 1.0))


@register
class TokenAccuracy(Metric):
    """Fraction of positions whose most likely next token is the right one."""

    name, higher_is_better, unit = "token-accuracy", True, "%"

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        logits, nxt = _next_token(out, target, self.name)
        return (logits.argmax(-1) == nxt.unsqueeze(0)).flatten(1).sum(1).double().cpu(), float(nxt.numel())

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        return TokenCE().loss(out, target, reduction)


def _squared_error(out: Tensor, target: Tensor, name: str) -> Tensor:
    if out.shape[1:] != target.shape:
        raise ShapeError(f"{name} needs outputs shaped as the targets, got {tuple(out.shape[1:])} and "
                         f"{tuple(target.shape)}")
    return (out.double() - target.double().unsqueeze(0)) ** 2


@register
class MSE(Metric):
    """Mean squared error per output element."""

    name, higher_is_better = "mse", False

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        return _squared_error(out, target, self.name).flatten(1).sum(1).cpu(), float(target.numel())

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        per = ((out - target) ** 2).flatten(1).mean(1)
        return per.sum() if reduction == "sum" else per.mean()


@register
class PSNR(Metric):
    """Peak signal-to-noise ratio in dB of outputs against targets in [0, 1], averaged over examples."""

    name, higher_is_better, unit = "psnr", True, "dB"

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        se = _squared_error(out, target, self.name)
        mse = se.flatten(2).mean(2).clamp_min(1e-20)  # (chips, B)
        return (-10.0 * torch.log10(mse)).sum(1).cpu(), float(target.shape[0])

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        return MSE().loss(out, target, reduction)


class FromCallable(Metric):
    """A user function ``fn(outputs (B, ...), targets (B, ...)) -> (B,)`` per-example scores, averaged."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str, higher_is_better: bool) -> None:
        self.fn, self.name, self.higher_is_better = fn, name, higher_is_better

    def batch(self, out: Tensor, target: Tensor) -> tuple[Tensor, float]:
        per = torch.stack([torch.as_tensor(self.fn(o, target)).reshape(-1).double() for o in out])
        if per.shape[1] != target.shape[0]:
            raise ShapeError(f"metric '{self.name}' must return one score per example ({target.shape[0]}), "
                             f"got {per.shape[1]}")
        if not bool(torch.isfinite(per).all()):
            raise NvcimError(f"metric '{self.name}' returned NaN or inf")
        return per.sum(1).cpu(), float(target.shape[0])


def from_callable(fn: Callable[[Tensor, Tensor], Tensor], name: str = "custom",
                  higher_is_better: bool = True) -> Metric:
    """A metric from a per-example score function (see :class:`FromCallable`)."""
    if not callable(fn):
        raise NvcimError(f"from_callable needs a function, got {type(fn).__name__}")
    return FromCallable(fn, name, higher_is_better)

