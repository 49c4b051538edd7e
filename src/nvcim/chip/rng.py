"""Counter-based random numbers: every draw is a pure function of (seed, purpose, chip, index).

That is what makes chip ``k`` the same chip whatever the chunking, the batch size or the number of chips
asked for, and read noise independent of how images are batched. The hash is Wellons' ``lowbias32`` in
wrapping int32 arithmetic, so it runs as plain tensor ops on any device and fuses under
``torch.compile``. Uniforms have 23-bit resolution; normals come from Box-Muller (tails to about 5.8 sigma).
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

_M1 = 0x7FEB352D
_M2 = -2073254261  # 0x846CA68B as a signed int32
_GOLD = -1640531535  # 0x9E3779B1 as a signed int32
_U = 1.0 / 8388608.0  # 2^-23


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


def polar(k: Tensor) -> tuple[Tensor, Tensor]:
    """Box-Muller radius and angle from int32 keys (two hashed uniforms): r cos(theta) and r sin(theta) are
    two independent standard normals."""
    h1 = mix(k)
    h2 = mix(h1 ^ 0x5BD1E995)
    u1 = ((h1 & 0x7FFFFF).to(torch.float32) + 0.5) * _U
    u2 = (h2 & 0x7FFFFF).to(torch.float32) * _U
    return torch.sqrt(-2.0 * torch.log(u1)), 6.283185307179586 * u2


_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that e * _LN2_HI is exact
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def log_unit(u: Tensor) -> Tensor:
    """Natural log of float32 ``u`` in (0, 1], as exponent plus a polynomial of the mantissa (Cephes' logf
    scheme; max relative error about 1e-7). Plain tensor ops: under ``torch.compile`` it vectorises to a
    third of the cost of the library log on the CPU."""
    bits = u.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # mantissa in [1, 2)
    big = m > 1.4142135
    m = torch.where(big, m * 0.5, m)  # [sqrt(1/2), sqrt(2)), where the polynomial is accurate
    ef = (e + big.to(torch.int32)).to(torch.float32)
    x = m - 1.0
    z = x * x
    p = torch.full_like(x, _LOG_POLY[0])
    for c in _LOG_POLY[1:]:
        p = p * x + c
    return x + (p * x * z + ef * _LN2_LO - 0.5 * z) + ef * _LN2_HI


def normal_pair(k: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent standard normals from each int32 key, by Box-Muller without library calls: radius
    sqrt(-2 ln u1) with :func:`log_unit`, and the angle as psi in [0, pi/4) (23 bits) reflected into one
    of the circle's eight octants by three more bits of the second hash (swap cos and sin, and two signs),
    with short Taylor polynomials for cos and sin on [0, pi/4) (errors below 3e-7). The angle is uniform
    on the circle, as in :func:`polar`; these are the read-noise draws of the fused loops."""
    h1 = mix(k)
    h2 = mix(h1 ^ 0x5BD1E995)
    u1 = ((h1 & 0x7FFFFF).to(torch.float32) + 0.5) * _U
    r = torch.sqrt(-2.0 * log_unit(u1))
    psi = (h2 & 0x7FFFFF).to(torch.float32) * (_U * 0.7853981633974483)
    s2 = psi * psi
    sin = psi * (1.0 + s2 * (-1.0 / 6 + s2 * (1.0 / 120 - s2 * (1.0 / 5040))))
    cos = 1.0 + s2 * (-0.5 + s2 * (1.0 / 24 + s2 * (-1.0 / 720 + s2 * (1.0 / 40320))))
    swap = (h2 & 0x800000) != 0
    ra = r * (1.0 - ((h2 >> 23) & 2).to(torch.float32))  # bit 24: sign of the first
    rb = r * (1.0 - ((h2 >> 24) & 2).to(torch.float32))  # bit 25: sign of the second
    return ra * torch.where(swap, sin, cos), rb * torch.where(swap, cos, sin)


def normal(k: Tensor) -> Tensor:
    """Standard normal from int32 keys: r cos(theta) of :func:`polar`."""
    r, theta = polar(k)
    return r * torch.cos(theta)


def draw(kind: str, base: int, chip_ids: Tensor, shape: tuple[int, ...], device: torch.device | None = None
         ) -> Tensor:
    """``(len(chip_ids), *shape)`` draws ('normal' or 'uniform') that depend only on (base, chip, index)."""
    ck = chip_keys(base, chip_ids.to(device) if device is not None else chip_ids)
    n = 1
    for s in shape:
        n *= s
    ek = element_keys(ck, n, shape)
    return normal(ek) if kind == "normal" else uniform(ek)


def draw_stream(kind: str, base: int, chip_id: int, shape: tuple[int, ...]) -> Tensor:
    """``(1, *shape)`` draws for one *training* chip from PyTorch's own generator, seeded by (base, chip).

    Several times faster than :func:`draw` on the CPU. Training chips are drawn once and thrown away, so they
    need to be reproducible for a seed but not the same on every device or chunking, which is what
    :func:`draw` is for; evaluated chips always use :func:`draw`.
    """
    gen = torch.Generator().manual_seed((mix_int(base) & 0xFFFFFFFF) << 31 ^ (chip_id & 0x7FFFFFFF))
    return (torch.randn if kind == "normal" else torch.rand)((1, *shape), generator=gen)
