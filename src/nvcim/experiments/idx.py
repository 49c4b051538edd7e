"""Reader for MNIST-format IDX files (plain or gzip), with clear errors for broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DatasetError

_DTYPES = {0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2), 0x0C: (torch.int32, 4),
           0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8)}


MAX_BYTES = 4 * 2**30  # refuse to inflate more than this (a gzip bomb, or a header that lies)


def _gunzip(raw: bytes, p: Path) -> bytes:
    """Decompress in bounded steps, so that a gzip bomb gets an error instead of exhausting memory."""
    d = zlib.decompressobj(wbits=31)
    out, total, buf = [], 0, raw
    while buf:
        chunk = d.decompress(buf, 64 * 2**20)
        total += len(chunk)
        if total > MAX_BYTES:
            raise DatasetError(f"{p}: inflates to more than {MAX_BYTES // 2**30} GiB; not a dataset file")
        out.append(chunk)
        buf = d.unconsumed_tail
        if not chunk and not buf:
            break
    if not d.eof:
        raise DatasetError(f"{p}: corrupt gzip data (truncated stream)")
    return b"".join(out)


def read_idx(path: str | Path) -> Tensor:
    """Read one IDX file into a tensor; truncation, bad magic and gzip corruption raise DatasetError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = _gunzip(raw, p)
    except FileNotFoundError:
        raise DatasetError(f"file not found: {p}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{p}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(f"{p}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, size = _DTYPES[raw[2]]
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{p}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    count = 1
    for d in dims:
        count *= d
    body = raw[4 + 4 * ndim:]
    if len(body) != count * size:
        raise DatasetError(f"{p}: header says {dims} ({count * size} bytes) but the file holds {len(body)} bytes")
    if count == 0:  # torch.frombuffer refuses an empty buffer
        return torch.zeros(dims, dtype=dtype)
    t = torch.frombuffer(bytearray(body), dtype=torch.uint8)
    if size > 1:  # IDX is big-endian
        t = t.view(-1, size).flip(-1).contiguous().view(dtype)
    else:
        t = t.view(dtype)
    return t.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(f"{directory}: missing {stem}[.gz]")


def load_idx_dir(directory: str | Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, test) pairs of (images (N, 1, H, W) float in [0, 1], labels (N,) int64) from an IDX folder."""
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"dataset directory not found: {d}")
    out = []
    for split in ("train", "t10k"):
        x = read_idx(_find(d, f"{split}-images-idx3-ubyte"))
        y = read_idx(_find(d, f"{split}-labels-idx1-ubyte"))
        if x.dim() != 3 or y.dim() != 1:
            raise DatasetError(f"{d}: {split} images must be 3-D and labels 1-D, "
                               f"got {tuple(x.shape)}, {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{d}: {x.shape[0]} {split} images but {y.shape[0]} labels")
        out.append((x.unsqueeze(1).float() / 255.0, y.long()))
    return out[0], out[1]
