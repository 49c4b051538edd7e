"""Counter-based random numbers: every draw is a pure function of (seed, purpose, chip, index).

That is what makes chip ``k`` the same chip whatever the chunking, the batch size or the number of chips
asked for, and read noise independent of how images are batched. The hash is Wellons' ``lowbias32`` in
wrapping int32 arithmetic, so it runs as plain tensor ops on any device and fuses under
``torch.compile``. Uniforms have 23-bit resolution; normals come from Box-Muller (tails to about 5.8 sigma).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import torch
from torch import Tensor

from .. import arith
from ..arith import log_unit
from .compiling import compiled_or_eager

_M1 = 0x7FEB352D
_M2 = -2073254261  # 0x846CA68B as a signed int32
_GOLD = -1640531535  # 0x9E3779B1 as a signed int32
_U = 1.0 / 8388608.0  # 2^-23


# Version of the draws that make a chip for a given config and seed; bumped whenever they change (2: cell
# normals drawn pairwise by plain arithmetic, 2026-12-03; 3: training chips' generators seeded from every
# bit of their key, 2026-12-06, which changes what training methods learn). Part of an experiment point's
# identity, so that a results store never mixes chips drawn the old way with the new under one key.
DRAWS = 3

def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def mix_int(v: int) -> int:
    """The hash on one Python int (same function as :func:`mix`)."""
    v &= 0xFFFFFFFF
    v ^= v >> 16
    v = (v * 0x7FEB352D) & 0xFFFFFFFF
    v ^= v >> 15
    v = (v * 0x846CA68B) & 0xFFFFFFFF
    v ^= v >> 16
    return _s32(v)


def mix(x: Tensor) -> Tensor:
    """lowbias32 on an int32 tensor (wrapping multiply, logical shifts via masks)."""
    if torch.compiler.is_compiling():  # inductor fuses it into one loop either way
        x = x ^ ((x >> 16) & 0xFFFF)
        x = x * _M1
        x = x ^ ((x >> 15) & 0x1FFFF)
        x = x * _M2
        return x ^ ((x >> 16) & 0xFFFF)
    # eager (programming draws: tens of millions of cells per chip of a ResNet-18): the same integers with
    # half the temporaries, about 2x faster
    x = x.clone()
    t = x >> 16
    x ^= t.bitwise_and_(0xFFFF)
    x *= _M1
    t = x >> 15
    x ^= t.bitwise_and_(0x1FFFF)
    x *= _M2
    t = x >> 16
    x ^= t.bitwise_and_(0xFFFF)
    return x


def key(*parts: int | str) -> int:
    """Combine integers and strings (layer names, purposes) into one 32-bit key."""
    h = 0x12345678
    for p in parts:
        v = zlib.crc32(p.encode()) if isinstance(p, str) else int(p)
        h = mix_int(h ^ mix_int(v + 0x632BE5AB))
    return h


def chip_keys(base: int, chip_ids: Tensor) -> Tensor:
    """One int32 key per chip, from a base key and global chip ids."""
    return mix(chip_ids.to(torch.int32) * _GOLD + base)


def read_keys(ck: Tensor, ik: Tensor) -> Tensor:
    """(B, c) read-noise keys from (c,) chip keys and (B,) image keys."""
    return mix(ck.view(1, -1) + ik.view(-1, 1))


def element_keys(keys: Tensor, n: int, shape: tuple[int, ...]) -> Tensor:
    """Keys of shape ``keys.shape + shape`` for ``n = prod(shape)`` elements under each key."""
    idx = torch.arange(n, dtype=torch.int32, device=keys.device).view(shape)
    return keys.view(*keys.shape, *([1] * len(shape))) + idx * _GOLD


def uniform(k: Tensor) -> Tensor:
    """Uniform in (0, 1) from int32 keys."""
    return ((mix(k) & 0x7FFFFF).to(torch.float32) + 0.5) * _U


def _box_muller(k: Tensor, sqrt: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    h1 = mix(k)
    h2 = mix(h1 ^ 0x5BD1E995)
    u1 = ((h1 & 0x7FFFFF).to(torch.float32) + 0.5) * _U
    r = sqrt(-2.0 * log_unit(u1))
    psi = (h2 & 0x7FFFFF).to(torch.float32) * (_U * 0.7853981633974483)
    s2 = psi * psi
    sin = psi * (1.0 + s2 * (-1.0 / 6 + s2 * (1.0 / 120 - s2 * (1.0 / 5040))))
    cos = 1.0 + s2 * (-0.5 + s2 * (1.0 / 24 + s2 * (-1.0 / 720 + s2 * (1.0 / 40320))))
    swap = (h2 & 0x800000) != 0
    ra = r * (1.0 - ((h2 >> 23) & 2).to(torch.float32))  # bit 24: sign of the first
    rb = r * (1.0 - ((h2 >> 24) & 2).to(torch.float32))  # bit 25: sign of the second
    return ra * torch.where(swap, sin, cos), rb * torch.where(swap, cos, sin)


def normal_pair(k: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent standard normals from each int32 key, by Box-Muller without library calls but the
    square root: radius sqrt(-2 ln u1) with :func:`log_unit`, and the angle as psi in [0, pi/4) (23 bits)
    reflected into one of the circle's eight octants by three more bits of the second hash (swap cos and
    sin, and two signs), with short Taylor polynomials for cos and sin on [0, pi/4) (errors below 3e-7).
    These are the read-noise draws of the fused loops (where the ADC rounds away an ulp)."""
    return _box_muller(k, torch.sqrt)


def cell_normals(k: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`normal_pair` with the square root of :mod:`nvcim.arith`: the same bits eager and compiled, so
    programmed chips do not depend on whether their draws were compiled."""
    return _box_muller(k, arith.sqrt)


def _normals(ck: Tensor, idx: Tensor, n: int) -> Tensor:
    """(c, n) normals under chip keys ``ck`` (c,): the pair of index key i gives elements i and h + i
    (h = ceil(n / 2), ``idx`` its (h,) index keys), half the hashing and logs of one normal per element."""
    a, b = cell_normals(ck.view(-1, 1) + idx.view(1, -1))
    return torch.cat([a, b], 1)[:, :n]


def _uniforms(ck: Tensor, idx: Tensor, n: int) -> Tensor:
    return uniform(ck.view(-1, 1) + idx.view(1, -1))


_LOOPS = {"normal": _normals, "uniform": _uniforms}
COMPILE_MIN = 1 << 22  # draws per call from which a compiled loop repays its (cached) compile


@functools.lru_cache(maxsize=4)
def _compiled(kind: str) -> Callable[..., Tensor]:
    return torch.compile(_LOOPS[kind], dynamic=True)


@functools.lru_cache(maxsize=64)
def _index(n: int, device: torch.device) -> Tensor:
    """(n,) int32 index keys ``i * golden``, an operand rather than computed in the loop (an int32 derived
    from the loop index defeats inductor's vectorisation)."""
    return torch.arange(n, dtype=torch.int32, device=device) * _GOLD


def draw(kind: str, base: int, chip_ids: Tensor, shape: tuple[int, ...], device: torch.device | None = None,
         compiled: bool = False) -> Tensor:
    """``(len(chip_ids), *shape)`` draws ('normal' or 'uniform') that depend only on (base, chip, index).

    ``compiled``: run the loop under ``torch.compile`` when it is large enough to repay it (at least
    :data:`COMPILE_MIN` draws; about 20x faster on a CPU). The loops use plain arithmetic only, so compiled
    and eager draws are the same to the bit, and the choice changes no chip.
    """
    ids = chip_ids.to(device) if device is not None else chip_ids
    ck = chip_keys(base, ids)
    n = math.prod(shape)
    idx = _index(n if kind == "uniform" else -(-n // 2), ck.device)
    big = compiled and n * len(ids) >= COMPILE_MIN
    return compiled_or_eager(_compiled(kind) if big else None, _LOOPS[kind], ck, idx, n).view(len(ids), *shape)


def draw_stream(kind: str, base: int, chip_id: int, shape: tuple[int, ...]) -> Tensor:
    """``(1, *shape)`` draws for one *training* chip from PyTorch's own generator, seeded by (base, chip).

    Several times faster than :func:`draw` on the CPU. Training chips are drawn once and thrown away, so they
    need to be reproducible for a seed but not the same on every device or chunking, which is what
    :func:`draw` is for; evaluated chips always use :func:`draw`.
    """
    # PyTorch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so the seed is a 32-bit hash of
    # both. Until 2026-12-06 it was (hash(base) << 31) ^ chip, whose low 32 bits hold one bit of the base:
    # every layer, side and purpose of a training chip drew from one of two streams, so the two cells of a
    # pair were stuck together and the training chips' faults were about half as harmful as the real ones.
    gen = torch.Generator().manual_seed(mix_int(mix_int(base) ^ mix_int(chip_id * 0x9E3779B1 + 0x632BE5AB)))
    return (torch.randn if kind == "normal" else torch.rand)((1, *shape), generator=gen)
