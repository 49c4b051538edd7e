"""Compiling the chip kernels in the background while chip passes run eager (``Runtime.compile = "auto"``).

Why: with a cold inductor cache a new user waited minutes for the first chip result (LeNet-5 on 50 chips:
207 s of compiling before the first call returned, issue #33), while the same call runs eager in seconds;
and a script shorter than the compile never got compiled speed, run after run (issue #40).

How: the first pass that would repay compiling is a hybrid pass: it takes every decision a compiled pass
takes (fused digital tails, the compiled DAC) and runs each kernel compiled where this machine compiled its
layout before (:mod:`.kernel_cache`, a cache load), and eager elsewhere, noting each such call: its name,
static arguments, and the shape, strides and dtype of every tensor operand, which is what dynamo guards on.
A child process (``python -m nvcim.chip.warmup``) compiles each noted kernel on zero tensors of that layout,
filling inductor's on-disk cache and entering each kernel in the ledger as it is done. A process, not a
thread: tracing and code generation hold the GIL, and a compiling thread starved the eager passes (a 7 s
pass took 105 s). While it runs, passes are hybrid too (each kernel compiled once it is entered); when it is
done they run compiled. The child runs in a session of its own and outlives its parent: what a short script
started, the next one finds compiled. One child compiles at a time per machine (a lock), and skips what an
earlier one entered. Eager and compiled loops give the same numbers to the bit (tested), so when the switch
happens changes speed only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import kernel_cache

log = logging.getLogger("nvcim")

Record = tuple[str, tuple, tuple[list[Any], ...]]

_recorded: list[Record] | None = None
_hybrid = False
_nominal: int | None = None  # the thread count while sharing_cores lowered it (or the parent's, in a child)
CHILD = [sys.executable, "-m", "nvcim.chip.warmup"]  # the compiling process (tests replace it)
# compiling processes per background compile: inductor's code generation is one Python thread, and on a small CPU
# two children roughly halve the wait for a model's kernels (measured, LeNet-5's 11 kernels cold: 123 s after
# the start against 4-5 minutes with one child, bench_first_result.py)
COMPILERS = min(4, os.cpu_count() or 1)


@contextlib.contextmanager
def hybrid() -> Iterator[None]:
    """Within this block, this (main) thread's compiled pass runs each kernel compiled only where this
    machine compiled its layout before (:mod:`.kernel_cache`), else eager."""
    global _hybrid
    before, _hybrid = _hybrid, True
    try:
        yield
    finally:
        _hybrid = before


@contextlib.contextmanager
def recording() -> Iterator[list[Record]]:
    """A :func:`hybrid` block whose eager kernel calls are noted in the yielded list."""
    global _recorded
    records: list[Record] = []
    _recorded = records
    try:
        with hybrid():
            yield records
    finally:
        _recorded = None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def hybrid_now() -> bool:
    return _hybrid and _main_thread()


def recording_now() -> bool:
    return _recorded is not None and _main_thread()


def nominal_threads() -> int:
    """The CPU threads compiled kernels are made for: this process's count, not the one lowered while a
    background compile runs (:func:`sharing_cores`); in a compiling child, its parent's."""
    return _nominal or torch.get_num_threads()


def note(name: str, static: tuple, args: tuple[Any, ...]) -> None:
    """Note one call of kernel ``name`` (only while :func:`recording`)."""
    if recording_now():
        assert _recorded is not None
        _recorded.append((name, static, tuple(_meta(a) for a in args)))


_meta = kernel_cache.meta


def _make(m: list[Any]) -> Any:
    """An operand of layout ``m`` (:func:`~.kernel_cache.meta`): zeros, or the value."""
    if m[0] == "value":
        return _tuples(m[1])
    _, shape, stride, dtype, device = m
    return torch.empty_strided(shape, stride, dtype=getattr(torch, dtype), device=device).zero_()


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples they were (static arguments hold tuples, never lists)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


class Warmup:
    """One background compile of the kernels noted in a recorded pass that this machine has not compiled;
    :attr:`ready` once the child compiled them all. A child that fails leaves the passes eager and says so
    once."""

    def __init__(self, records: list[Record]) -> None:
        from . import compiling

        unique: dict[str, list[Any]] = {}
        for name, static, metas in records:
            key, _ = compiling.kernel_key(name, static, metas)
            if not kernel_cache.known(key):  # a later model with the same layers: nothing left to compile
                unique.setdefault(key, [name, list(static), [list(m) for m in metas]])
        self.records = list(unique.values())
        self.procs: list[subprocess.Popen] = []  # the compiling children
        self.proc: subprocess.Popen | None = None  # the first of them
        self.logs: list[Path] = []  # their standard error (removed by each child that succeeds)
        self.started = 0.0
        self._state = "new"

    def start(self) -> Warmup:
        self.started = time.perf_counter()
        if not self.records:
            self._state = "ready"
            return self
        for i in range(min(COMPILERS, len(self.records))):
            # each child starts at its own place in the list (the first at the front, the second at the back)
            order = self.records[::-1] if i % 2 else self.records
            shift = (i // 2) * len(order) // max(1, COMPILERS // 2)
            self.procs.append(self._child(order[shift:] + order[:shift]))
        self.proc = self.procs[0]
        self._state = "running"
        return self

    def _child(self, records: list[list[Any]]) -> subprocess.Popen:
        fd, name = tempfile.mkstemp(prefix="nvcim-compile-", suffix=".log")
        self.logs.append(Path(name))
        # a session of its own: the child outlives this process (and a Ctrl-C in its terminal)
        with os.fdopen(fd, "w") as err:
            # one code generation per child: inductor's pool of compiling workers would take the cores twice
            env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1")
            proc = subprocess.Popen(CHILD, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                    text=True, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"threads": nominal_threads(), "log": name, "records": records}))
        proc.stdin.close()
        return proc

    @property
    def ready(self) -> bool:
        if self._state == "running" and all(p.poll() is not None for p in self.procs):
            took = time.perf_counter() - self.started
            bad = [(p, f) for p, f in zip(self.procs, self.logs) if p.returncode]
            if not bad:
                self._state = "ready"
                log.info("chip kernels compiled in the background in %.0f s; chip passes now run compiled", took)
            else:
                self._state = "failed"
                p, f = bad[0]
                err = (f.read_text() if f.exists() else "").strip().splitlines()
                log.warning("compiling the chip kernels failed (%s; the whole log: %s); chip passes stay eager",
                            err[-1] if err else f"exit status {p.returncode}", f)
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
    global _nominal
    n = torch.get_num_threads()
    if w is None or not w.running or n < 2:
        yield
        return
    torch.set_num_threads(n - 1)
    _nominal = n
    try:
        yield
    finally:
        _nominal = None
        torch.set_num_threads(n)


def _compile(job: dict[str, Any]) -> None:
    """Compile each noted kernel that the ledger lacks, on zero tensors of its layout, for the parent's
    thread count (in a child process). Children of one parent take the list from different ends and
    skip a kernel another one holds (:func:`~.kernel_cache.claim`), then wait for those; a compiled kernel
    is entered at once, so a child stopped half-way keeps what it did."""
    global _nominal
    from . import compiling, kernel  # noqa: F401  (kernel registers the read loops)

    _nominal = int(job["threads"])  # compiled kernels run (and so are made) at the parent's thread count
    compiling.raise_recompile_limit()  # as a compiled pass sets it
    held_elsewhere: list[list[Any]] = []
    with torch.no_grad():
        for wait, records in ((False, job["records"]), (True, held_elsewhere)):
            for name, static, metas in list(records):
                key, _ = compiling.kernel_key(name, _tuples(static), metas)
                if kernel_cache.known(key):
                    continue
                with kernel_cache.claim(key, wait) as mine:
                    if not mine:
                        held_elsewhere.append([name, static, metas])
                    elif not kernel_cache.known(key):  # not compiled while this one waited
                        compiling.compiled_kernel(name, _tuples(static))(*(_make(m) for m in metas))
    if compiling.failed():
        raise RuntimeError("torch.compile failed")
    with contextlib.suppress(OSError):
        Path(job["log"]).unlink()  # nothing to report


if __name__ == "__main__":
    _compile(json.loads(sys.stdin.read()))
