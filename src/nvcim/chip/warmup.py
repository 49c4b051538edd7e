"""Compiling the chip kernels in the background while chip passes run eager (``Runtime.compile = "auto"``).

Why: with a cold inductor cache a new user waited minutes for the first chip result (LeNet-5 on 50 chips:
207 s of compiling before the first call returned, issue #33), while the same call runs eager in seconds.

How: the first pass that would repay compiling runs eager, taking every decision a compiled pass takes (fused
digital tails, the compiled DAC), and notes each kernel it calls: its name, static arguments, and the shape,
strides and dtype of every tensor operand, which is what dynamo guards on. A child process
(``python -m nvcim.chip.warmup``) compiles each noted kernel on zero tensors of that layout, filling
inductor's on-disk cache. A process, not a thread: tracing and code generation hold the GIL, and a
compiling thread starved the eager passes (a 7 s pass took 105 s). Passes stay eager until the child is done;
the next pass compiles from the warm cache (seconds) and runs compiled from then on. Eager and compiled loops
give the same numbers to the bit (tested), so when the switch happens changes speed only. A child still
compiling when this process exits is stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("nvcim")

Meta = tuple[Any, ...]
Record = tuple[str, tuple, tuple[Meta, ...]]

_recorded: list[Record] | None = None
_children: list[subprocess.Popen] = []
_compiled: set[str] = set()  # kernels (name, static, layout) a child of this process compiled
CHILD = [sys.executable, "-m", "nvcim.chip.warmup"]  # the compiling process (tests replace it)


@contextlib.contextmanager
def recording() -> Iterator[list[Record]]:
    """Within this block, the kernels this (main) thread's compiled pass would call run eager and are
    noted in the yielded list."""
    global _recorded
    records: list[Record] = []
    _recorded = records
    try:
        yield records
    finally:
        _recorded = None


def recording_now() -> bool:
    return _recorded is not None and threading.current_thread() is threading.main_thread()


def note(name: str, static: tuple, args: tuple[Any, ...]) -> None:
    """Note one call of kernel ``name`` (only while :func:`recording`)."""
    if recording_now():
        assert _recorded is not None
        _recorded.append((name, static, tuple(_meta(a) for a in args)))


def _meta(a: Any) -> Meta:
    if isinstance(a, Tensor):
        return ("tensor", list(a.shape), list(a.stride()), str(a.dtype).removeprefix("torch."), str(a.device))
    return ("value", a)


def _make(m: list[Any]) -> Any:
    if m[0] == "value":
        return _tuples(m[1])
    _, shape, stride, dtype, device = m
    return torch.empty_strided(shape, stride, dtype=getattr(torch, dtype), device=device).zero_()


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples they were (static arguments hold tuples, never lists)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


class Warmup:
    """One background compile of the kernels noted in a recorded pass; :attr:`ready` once the child
    compiled them all. A child that fails leaves the passes eager and says so once."""

    def __init__(self, records: list[Record]) -> None:
        unique: dict[str, list[Any]] = {}
        for name, static, metas in records:
            item = [name, list(static), [list(m) for m in metas]]
            key = json.dumps(item, default=str)
            if key not in _compiled:  # a later model with the same layers: nothing left to compile
                unique.setdefault(key, item)
        self.records = list(unique.values())
        self._keys = set(unique)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self._state = "new"

    def start(self) -> Warmup:
        self.started = time.perf_counter()
        if not self.records:
            self._state = "ready"
            return self
        self.proc = subprocess.Popen(CHILD, stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ),
                                     text=True)
        _children.append(self.proc)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.records))
        self.proc.stdin.close()
        self._state = "running"
        return self

    @property
    def ready(self) -> bool:
        if self._state == "running" and self.proc is not None and self.proc.poll() is not None:
            took = time.perf_counter() - self.started
            if self.proc.returncode == 0:
                self._state = "ready"
                _compiled.update(self._keys)
                log.info("chip kernels compiled in the background in %.0f s; chip passes now run compiled", took)
            else:
                self._state = "failed"
                err = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()
                log.warning("compiling the chip kernels failed (%s); chip passes stay eager",
                            err[-1] if err else f"exit status {self.proc.returncode}")
        return self._state == "ready"

    @property
    def running(self) -> bool:
        return self._state == "running" and not self.ready

    @property
    def failed(self) -> bool:
        return self._state == "failed"


@contextlib.contextmanager
def sharing_cores(w: Warmup | None) -> Iterator[None]:
    """While ``w`` compiles, a CPU pass leaves one core to it (on 2 cores the compile otherwise got a third of
    the machine and took 4x as long: 406 s against 108 s alone, LeNet-5)."""
    n = torch.get_num_threads()
    if w is None or not w.running or n < 2:
        yield
        return
    torch.set_num_threads(n - 1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@atexit.register
def _stop_children() -> None:
    for p in _children:
        if p.poll() is None:
            p.terminate()


def _compile(records: list[list[Any]]) -> None:
    """Compile each noted kernel once, on zero tensors of its layout (in the child process)."""
    from . import compiling, kernel  # noqa: F401  (kernel registers the read loops)

    # no torch.set_num_threads here: inductor generates its CPU loops for the thread count it compiles under,
    # and a kernel compiled for one thread is not the parent's (it compiled again: 193 s, LeNet-5)
    compiling.raise_recompile_limit()  # as a compiled pass sets it
    with torch.no_grad():
        for name, static, metas in records:
            args = [_make(m) for m in metas]
            if name == "dac":
                compiling.dac_kernel(*_tuples(static))(*args)
            else:
                compiling.compiled_kernel(name, _tuples(static))(*args)
    if compiling.failed():
        raise RuntimeError("torch.compile failed")


if __name__ == "__main__":
    _compile(json.loads(sys.stdin.read()))
