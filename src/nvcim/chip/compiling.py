"""Compiling the chip's loops: one place for ``torch.compile``, its fallback and the background warm-up.

Every loop that runs compiled (the read epilogues, the managed-I/O loop, the DAC, the programming write) is
plain tensor code that gives the same bits eager. :func:`compiled_or_eager` runs the compiled version and,
where compiling fails (no C++ compiler, an unsupported backend), warns once and runs eager from then on:
results stay correct, only slower. Loops are served by name (:func:`register_kernel`), so that a pass being
recorded for a background compile (:mod:`.warmup`) can note each call and run it eager.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..circuits import get_dac
from . import kernel_cache, warmup

_KERNELS: dict[str, tuple[Callable[..., Any], tuple[int, ...]]] = {}  # name -> (loop, batch operands)
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


def register_kernel(name: str, fn: Callable[..., Any], batch: tuple[int, ...] = (0,)) -> None:
    """A loop that :func:`eager_kernel` and :func:`compiled_kernel` serve by ``name`` (its trailing
    arguments are ``static``, what a compiled version specialises on). ``batch``: the positions of the
    operands whose leading dimension is the (sub-)batch, compiled symbolic (:func:`_compiled_kernel`)."""
    _KERNELS[name] = (fn, batch)


def run_kernel(name: str, static: tuple, compiled: bool, *args: Any) -> Any:
    """Loop ``name`` on ``args``, compiled when asked and possible."""
    return (compiled_kernel if compiled else eager_kernel)(name, static)(*args)


def eager_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` with its trailing arguments ``static`` bound (each call noted for a background
    compile, :mod:`.warmup`, while one is being recorded)."""
    fn = _KERNELS[name][0]

    def run(*a: Any) -> Any:
        warmup.note(name, static, a)
        return fn(*a, *static)

    return run


def kernel_key(name: str, static: tuple, metas: Any) -> tuple[str, kernel_cache.Layout]:
    """The ledger key (:mod:`.kernel_cache`) and layout of loop ``name`` compiled for operands of
    :func:`~.kernel_cache.meta` ``metas``."""
    lay = kernel_cache.layout(name, static, metas, _KERNELS[name][1])
    return kernel_cache.key(lay, warmup.nominal_threads()), lay


def compiled_kernel(name: str, static: tuple) -> Callable[..., Tensor]:
    """Loop ``name`` compiled. In a hybrid pass (:func:`.warmup.hybrid`, and the pass recorded for a
    background compile) only where this machine has compiled its layout before (:mod:`.kernel_cache`: the
    compile is then a cache load); elsewhere eager, the call noted when recording. Compiled kernels run at
    the thread count outside :func:`.warmup.sharing_cores`, the one a background compile made them for."""
    batch = _KERNELS[name][1]
    eager = eager_kernel(name, static)

    def run(*a: Any) -> Any:
        a = tuple(_own_storage(v) for v in a)
        k, lay = kernel_key(name, static, [kernel_cache.meta(v) for v in a])
        if warmup.hybrid_now() and not kernel_cache.known(k):
            return eager(*a)
        import torch._dynamo  # here: importing dynamo takes 0.8 s, which eager runs need not pay

        for i in batch:
            t = a[i]
            if isinstance(t, Tensor) and t.dim() and t.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(t, 0)
        compiled = _compiled_kernel(name, static, json.dumps(lay, default=str))
        # at the nominal thread count: inductor makes a CPU loop for the count it compiles under, and dynamo
        # guards on it (a pass while a background compile has a core would trace every kernel again)
        threads, before = warmup.nominal_threads(), torch.get_num_threads()
        if threads != before:
            torch.set_num_threads(threads)
        try:
            out = compiled_or_eager(compiled, eager, *a)
        finally:
            if threads != before:
                torch.set_num_threads(before)
        if not _failed and not kernel_cache.known(k):
            kernel_cache.mark(k, lay)
        return out

    return run


def _own_storage(t: Any) -> Any:
    """A tensor operand as one of its own: a view (a sub-batch of the caller's batch) as a plain tensor on the
    same memory, and one that starts inside its storage as a copy. Dynamo traces a view with its base's
    size and a storage offset as a number, so that a kernel first called on a sub-batch other than the
    first traced a graph that no background compile (on fresh tensors) stored (measured: the first DAC of
    LeNet-5, compiled again in the foreground)."""
    if not isinstance(t, Tensor) or not (t._is_view() or t.storage_offset()):
        return t
    if t.storage_offset():
        return t.clone()  # keeps the strides of a dense tensor
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), 0, t.shape, t.stride())


@functools.lru_cache(maxsize=512)
def _compiled_kernel(name: str, static: tuple, lay: str) -> Callable[..., Tensor]:
    """Loop ``name`` under ``torch.compile``, one function per operand layout ``lay``
    (:func:`~.kernel_cache.layout`): its batch dimensions symbolic (marked by the caller), everything else
    static. Why static: under ``dynamic=True`` the geometry would be symbolic too; the pooling windows' index
    arithmetic on symbols neither fuses with the epilogue nor vectorises (2.5x slower, measured), and the
    graph would depend on which sizes happen to be equal (dynamo gives equal sizes one symbol), so that a
    process traced a graph other than the one a background compile stored for the same layout (measured:
    2 of 8 LeNet-5 graphs, 35 s compiled in the foreground). Why one function per layout: dynamo's automatic
    dynamic shapes make a function's second graph depend on the calls before it; a function that sees one
    layout traces the same graph in every process."""
    fn = _KERNELS[name][0]

    def bound(*a: Any) -> Tensor:
        return fn(*a, *static)

    tag = hashlib.sha256(lay.encode()).hexdigest()[:10]
    return torch.compile(own_code(bound, f"{name}_{tag}"), dynamic=None)


def own_code(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` with a code object of its own: dynamo keeps compiled graphs per code object, so closures of
    one function would otherwise share one cache (and one recompile limit) across every layer kind."""
    fn.__code__ = fn.__code__.replace(co_name=name)
    return fn


def raise_recompile_limit() -> None:
    """Dynamo's default limit of 8 graphs per code object, after which every call would silently run eager:
    raised as a guard (each compiled function now sees one operand layout, so it should need one graph)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    if hasattr(cfg, "recompile_limit") and cfg.recompile_limit < 64:
        cfg.recompile_limit = 64


def _dac_loop(x: Tensor, full_scale: Tensor, model: str, bits: int, signed: bool) -> Tensor:
    return get_dac(model).quantize(x, full_scale, bits, signed)


register_kernel("dac", _dac_loop, batch=(0,))


def dac_kernel(model: str, bits: int, signed: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """The DAC model ``model`` as one compiled pass (eager, the uniform DAC is four passes over a block's
    activations) for ``bits`` and ``signed``; eager where compiling fails."""
    return compiled_kernel("dac", (model, bits, signed))
