"""Which chip kernels this machine has compiled: a ledger beside inductor's on-disk cache.

Why: compile work must outlive the process that started it (issue #40). Inductor keeps compiled graphs on
disk, but a process cannot tell before tracing a call whether it will hit that cache, and a miss compiles in
the foreground (tens of seconds on a small CPU). The ledger says it in advance: one file per kernel layout
(loop name, static arguments, operand layouts with the batch size left out, the thread count it was
compiled for, the torch version and a digest of nvcim's kernel code), written once a compile of that layout
completed, by whichever process compiled it. A pass runs a kernel in the ledger compiled at once (a cache
load, about a second) and any other kernel eager, while a background process compiles it (:mod:`.warmup`).

The ledger lives inside inductor's cache folder (``TORCHINDUCTOR_CACHE_DIR``, default
``/tmp/torchinductor_<user>``), so that removing that folder removes both. It is off when inductor's FX graph
cache is (its entries would then promise cache hits that cannot happen).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so concurrent background compiles may repeat a kernel
    fcntl = None  # type: ignore[assignment]

Layout = list[Any]
_known: set[str] = set()  # ledger entries seen in this process (an entry is never removed while it runs)
_made: set[Path] = set()  # ledger folders made


def meta(a: Any) -> list[Any]:
    """An operand as the compile sees it: a tensor's shape, strides, dtype and device, or a value."""
    if isinstance(a, Tensor):
        return ["tensor", list(a.shape), list(a.stride()), str(a.dtype).removeprefix("torch."), str(a.device)]
    return ["value", a]


def layout(name: str, static: Sequence[Any], metas: Sequence[Sequence[Any]], batch: Sequence[int]) -> Layout:
    """What a compiled kernel specialises on: ``name``, ``static`` and each operand's :func:`meta`, with the
    leading size of the batch operands (positions ``batch``) written as "B" when above 1: those dimensions
    are compiled symbolic, so one graph serves every sub-batch (size 1 is always specialised by dynamo,
    hence kept). Devices by type (``cuda:1`` compiles what ``cuda:0`` does)."""
    out: list[Any] = []
    for i, m in enumerate(metas):
        if m[0] == "tensor":
            shape = list(m[1])
            if i in batch and shape and shape[0] > 1:
                shape[0] = "B"
            out.append(["tensor", shape, list(m[2]), m[3], str(m[4]).split(":")[0]])
        else:
            out.append(["value", m[1]])
    return [name, list(static), out]


def key(lay: Layout, threads: int) -> str:
    """The ledger key of ``lay`` compiled for ``threads`` CPU threads under this torch and this nvcim's code."""
    text = json.dumps([torch.__version__, source_digest(), threads, lay], default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of the code the kernels trace (the simulator's ``chip``, ``circuits`` and ``devices``
    packages, and the shared arithmetic): a kernel whose code changed under the same layout traces a new
    graph, which inductor's cache misses, so an entry of the old code must not promise a hit."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((f for d in ("chip", "circuits", "devices") for f in (root / d).glob("*.py")), key=str)
    h = hashlib.sha256()
    for f in [*files, root / "arith.py"]:
        h.update(f.name.encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def directory() -> Path | None:
    """The ledger's folder (made on first use), or None where inductor's FX graph cache is off or the
    folder cannot be made (the ledger only saves time: without it every kernel compiles in the background)."""
    from torch._inductor import config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    if not config.fx_graph_cache:
        return None
    try:
        path = Path(cache_dir()) / "nvcim-kernels"
        if path not in _made:
            path.mkdir(parents=True, exist_ok=True)
            _made.add(path)
    except OSError:
        return None
    return path


def known(k: str) -> bool:
    """Whether a compile of the kernel keyed ``k`` completed on this machine (in its inductor cache)."""
    if k in _known:
        return True
    root = directory()
    if root is not None and (root / k).exists():
        _known.add(k)
        return True
    return False


def mark(k: str, lay: Layout) -> None:
    """Enter kernel ``k`` (its layout ``lay`` as the file's text, for whoever reads the folder)."""
    _known.add(k)
    root = directory()
    if root is None:
        return
    tmp = root / f".{k}.{os.getpid()}"
    with contextlib.suppress(OSError):  # a full or read-only disk: the kernel compiles again next time
        tmp.write_text(json.dumps(lay, default=str) + "\n")
        os.replace(tmp, root / k)


def forget() -> None:
    """Drop what this process remembers of the ledger (tests point inductor at a new cache folder)."""
    _known.clear()
    _made.clear()


@contextlib.contextmanager
def claim(k: str, wait: bool) -> Iterator[bool]:
    """Hold the compile lock of kernel ``k``: yields True once held, waiting for another process that holds
    it when ``wait``, else False at once. Background compiles share a kernel list this way, each taking
    the next kernel no other holds, and none compiles a kernel twice."""
    root = directory()
    if root is None or fcntl is None:
        yield True
        return
    try:
        (root / "locks").mkdir(exist_ok=True)
        f = open(root / "locks" / k, "w")  # noqa: SIM115 (closed below)
    except OSError:
        yield True
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
