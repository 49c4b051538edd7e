"""Elementary functions from plain float32 arithmetic and bit operations.

Library ``exp``, ``log`` and ``sqrt`` give results that differ by an ulp between eager torch and loops
compiled by ``torch.compile`` (different vector math libraries). Adds, multiplies, compares and bit
operations do not, so a function built from them alone gives the same bits both ways: a chip then does not
depend on whether its programming was compiled. Device models should use these where they need them.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that e * _LN2_HI is exact
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1)
_LOG2E = 1.44269504088896341


def log_unit(u: Tensor) -> Tensor:
    """Natural log of float32 ``u`` in (0, 1], as exponent plus a polynomial of the mantissa (Cephes' logf
    scheme; max relative error about 1e-7). Under ``torch.compile`` it vectorises to a third of the cost
    of the library log on the CPU."""
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


def sqrt(x: Tensor) -> Tensor:
    """Square root of float32 ``x`` > 0: the bit-trick guess of 1/sqrt(x), three Newton steps (relative
    error below 3e-7), times ``x``."""
    y = (0x5F3759DF - (x.view(torch.int32) >> 1)).view(torch.float32)
    for _ in range(3):
        y = y * (1.5 - 0.5 * x * y * y)
    return x * y


def exp(x: Tensor) -> Tensor:
    """e^x for float32 ``x``, clipped to [-87, 88] (no overflow, no denormals): 2^n times a degree-7
    polynomial of the remainder r = x - n ln 2, |r| <= ln 2 / 2 (Cephes' expf; relative error about 2e-7)."""
    x = x.clamp(-87.0, 88.0)
    n = torch.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = torch.full_like(r, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + c
    scale = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return (p * r * r + r + 1.0) * scale
