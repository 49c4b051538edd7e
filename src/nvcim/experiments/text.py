"""Text for language models: byte-level tokens in fixed context windows, with a held-out split.

Sources: a ``.txt`` file, a folder of ``.txt`` files (sorted by name, joined), or ``pystdlib``: the Python
standard library's own ``.py`` sources, which every machine with Python has (a corpus for the language-model
example that needs no download). Every byte is a token (vocabulary 256), so any encoding reads; the text is
cut into non-overlapping windows of ``context`` tokens, and the last tenth of the windows (the end of the
text, never seen in training) is the test split.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DatasetError

CONTEXT = 64  # tokens per window
STDLIB_BYTES = 1_500_000  # of the standard library's sources: enough to train a small GPT in a minute or two
VOCAB = 256


def stdlib_text(limit: int = STDLIB_BYTES) -> bytes:
    """The first ``limit`` bytes of the standard library's top-level ``.py`` files, in sorted order (the same
    bytes on every machine with this Python version)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise DatasetError(f"no Python sources found under {root}")
    out, n = [], 0
    for f in files:
        b = f.read_bytes()
        out.append(b)
        n += len(b)
        if n >= limit:
            break
    return b"".join(out)[:limit]


def read_text(path: Path) -> bytes:
    """The bytes of a text file, or of every ``.txt`` file of a folder (sorted, joined by a newline)."""
    if path.is_file():
        return path.read_bytes()
    files = sorted(path.glob("*.txt"))
    if not files:
        raise DatasetError(f"{path}: no .txt files in this folder")
    return b"\n".join(f.read_bytes() for f in files)


def windows(data: bytes, context: int = CONTEXT, test_fraction: float = 0.1
            ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Byte tokens (N, context) int64, train and test, each as (tokens, tokens): a causal model's inputs are
    its own targets (the metric scores position t on token t + 1)."""
    if context < 2:
        raise DatasetError(f"context = {context} is invalid: allowed an integer >= 2")
    n = len(data) // context
    if n < 2:
        raise DatasetError(f"the text has {len(data)} bytes: at least {2 * context} are needed for a train and a "
                           f"test window of {context} tokens")
    tokens = torch.frombuffer(bytearray(data[: n * context]), dtype=torch.uint8).long().view(n, context)
    n_test = max(1, round(n * test_fraction))
    train, test = tokens[:-n_test], tokens[-n_test:]
    return (train, train), (test, test)
