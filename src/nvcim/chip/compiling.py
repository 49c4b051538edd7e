"""Compiling the chip's loops: one place for ``torch.compile``, its fallback and the background warm-up.

Every loop that runs compiled (the read epilogues, the managed-I/O loop, the DAC, the programming write) is
plain tensor code that gives the same bits eager. :func:`compiled_or_eager` runs the compiled version and,
where compiling fails (no C++ compiler, an unsupported backend), warns once and runs eager from then on:
results stay correct, only slower. Loops are served by name (:func:`register_kernel`), so that a pass being
recorded for a background compile (:mod:`.warmup`) can note each call and run it eager.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..circuits import get_dac
from . import warmup

_KERNELS: dict[str, Callable[..., Tensor]] = {}
_failed = False  # a compile failed in this process: everything runs eager from then on


def failed() -> bool:
    """Whether compiling failed in this process (every loop runs eager since)."""
    return _failed


def compiled_or_eager(compiled: Callable[..., Any] | None, eager: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> Any:
    """``compiled(*args)`` when given and compiling has not failed, else (and from the first failure on,
    with a warning) ``eager(*args)``: the same numbers, slower."""
    global _failed
    if compiled is not None and not _failed:
        try:
            return compiled(*args, **kwargs)
        except Exception as e:  # no C++ compiler, unsupported backend: stay correct, just slower
            _failed = True
            warnings.warn(f"torch.compile failed ({type(e).__name__}); running the eager loops", stacklevel=3)
    return eager(*args, **kwargs)


def register_kernel(name: str, fn: Callable[..., Any]) -> None:
    """A loop that :func:`eager_kernel` and :func:`compiled_kernel` serve by ``name`` (its trailing
    arguments are ``static``, what a compiled version specialises on)."""
    _KERNELS[name] = fn


def run_kernel(name: str, static: tuple, compiled: bool, *args: Any) -> Any:
    """Loop ``name`` on ``args``, compiled when asked and possible."""
    return compiled_or_eager(compiled_kernel(name, static) if compiled else None, eager_kernel(name, static), *args)


def eager_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` with its trailing arguments ``static`` bound (each call noted for a background
    compile, :mod:`.warmup`, while one is being recorded)."""
    fn = _KERNELS[name]

    def run(*a: Any) -> Any:
        warmup.note(name, static, a)
        return fn(*a, *static)

    return run


def compiled_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` compiled (:func:`_compiled_kernel`); while a pass is recorded for a background compile
    (:mod:`.warmup`), the eager loop instead, its call noted: the recorded pass takes every decision a
    compiled pass takes (fused tails, the compiled DAC) and so notes the kernels that pass will call."""
    if warmup.recording_now():
        return eager_kernel(name, static)
    return _compiled_kernel(name, static)


@functools.lru_cache(maxsize=128)
def _compiled_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` under ``torch.compile``, one compiled function per ``static`` (the tail's ops and the
    output geometry), closed over and compiled with automatic dynamic shapes, so that only what does change
    (the sub-batch size) becomes symbolic: under ``dynamic=True`` the geometry would be symbolic too, and
    the pooling windows' index arithmetic on symbols neither fuses with the epilogue nor vectorises (2.5x
    slower, measured)."""
    fn = _KERNELS[name]

    def bound(*a: Any) -> Tensor:
        return fn(*a, *static)

    # a loop whose only static operand is the ADC model stays shape-polymorphic (the sub-batch and the
    # geometry vary with every layer); the tails specialise on their geometry (see above)
    return torch.compile(own_code(bound, f"{name}_{_compiled_kernel.cache_info().currsize}"),
                         dynamic=True if len(static) == 1 else None)


def own_code(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` with a code object of its own: dynamo keeps compiled graphs per code object, so closures of
    one function would otherwise share one cache (and one recompile limit) across every layer kind."""
    fn.__code__ = fn.__code__.replace(co_name=name)
    return fn


def raise_recompile_limit() -> None:
    """One graph per layer kind (size-1 dims and strides specialise): a deep model has more kinds than
    dynamo's default limit of 8, after which every call would silently run eager."""
    import torch._dynamo

    cfg = torch._dynamo.config
    if hasattr(cfg, "recompile_limit") and cfg.recompile_limit < 64:
        cfg.recompile_limit = 64


@functools.lru_cache(maxsize=16)
def dac_kernel(model: str, bits: int, signed: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """The DAC model ``model`` as one compiled pass (eager, the uniform DAC is four passes over a block's
    activations) for ``bits`` and ``signed``; eager where compiling fails."""
    quantize = get_dac(model).quantize

    def bound(x: Tensor, full_scale: Tensor) -> Tensor:
        return quantize(x, full_scale, bits, signed)

    fn = torch.compile(own_code(bound, f"dac_{model}_{bits}_{int(signed)}"), dynamic=None)

    def run(x: Tensor, full_scale: Tensor) -> Tensor:
        if warmup.recording_now():
            warmup.note("dac", (model, bits, signed), (x, full_scale))
            return bound(x, full_scale)
        return compiled_or_eager(fn, bound, x, full_scale)

    return run
