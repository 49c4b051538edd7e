"""IR drop on the crossbar wires: a first-order model for simulation and an exact nodal solve to check it.

Geometry (both functions): a tile of R rows x C columns. Row k is driven at its left end (before column 0)
with voltage v_k; column j is held at virtual ground by its sense amplifier below row R-1. Every wire
segment between neighbouring cells, and between the last cell and the driver or the sense amplifier, has
resistance ``r`` (array.wire_resistance).

First-order model (:func:`attenuation`): the drops are estimated from the *ideal* cell currents
i_kj = G_kj v_k. Row segment j of row k carries sum_{j'>=j} i_kj', so the row node under cell (k, j) sits
r sum_{j'<=j} sum_{j''>=j'} i_kj'' below the driver; column segment below row k carries
sum_{k'<=k} i_k'j, so the column node of (k, j) sits r sum_{k'>=k} sum_{k''<=k'} i_k''j above ground. With
delta the sum of both as a fraction of the drive, the cell sees 1 / (1 + delta) of it: the drop that the
*real* currents cause, if every current shrinks by that same factor a (a = 1 - delta a), as in a voltage
divider. To keep inference cheap the factor is input-independent: the cell's own row is driven at full
scale and the column currents of the other rows at the reference activity ``a`` (array.ir_activity).

Until 2026-12-06 the factor was 1 - delta, clipped at 0. That is the same to first order, but it
overestimates large drops and reaches 0 once delta >= 1, so dense, high-conductance arrays read nothing at
all: 100 % current error at delta = 3 on a 32 x 32 tile, where the divider's is 8 % (against the nodal
solve, tests/test_physics.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def attenuation(g: Tensor, r: float, activity: float) -> Tensor:
    """Factor in (0, 1] by which each cell's contribution shrinks; ``g`` is ``(..., R, C)`` in siemens."""
    if r == 0:
        return torch.ones_like(g)
    row_seg = g.flip(-1).cumsum(-1).flip(-1)  # current in the row segment left of cell j (unit drive)
    row_drop = r * row_seg.cumsum(-1)
    col_seg = activity * g.cumsum(-2)  # current in the column segment below row k
    col_rise = r * col_seg.flip(-2).cumsum(-2).flip(-2)
    return 1.0 / (1.0 + row_drop + col_rise)


def nodal_column_currents(g: Tensor, v: Tensor, r: float) -> Tensor:
    """Exact column currents (A) of one R x C tile by solving Kirchhoff's equations (dense, float64).

    Unknowns are the row-wire node voltages u_kj and column-wire node voltages w_kj (2RC of them). Meant
    for validation on small tiles, not for simulation.
    """
    g = g.to(torch.float64)
    v = v.to(torch.float64)
    n_r, n_c = g.shape
    n = n_r * n_c
    a = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    b = torch.zeros(2 * n, dtype=torch.float64)
    gw = 1.0 / r

    def u(k: int, j: int) -> int:
        return k * n_c + j

    def w(k: int, j: int) -> int:
        return n + k * n_c + j

    for k in range(n_r):
        for j in range(n_c):
            # row node (k, j): left neighbour (or driver), right neighbour, the cell down to w(k, j)
            i = u(k, j)
            a[i, i] += gw + g[k, j]
            if j == 0:
                b[i] += gw * v[k]
            else:
                a[i, i - 1] -= gw
            if j < n_c - 1:
                a[i, i] += gw
                a[i, i + 1] -= gw
            a[i, w(k, j)] -= g[k, j]
            # column node (k, j): the cell from u(k, j), upper neighbour, lower neighbour (or ground)
            i = w(k, j)
            a[i, i] += g[k, j] + gw
            a[i, u(k, j)] -= g[k, j]
            if k > 0:
                a[i, i] += gw
                a[i, w(k - 1, j)] -= gw
            if k < n_r - 1:
                a[i, w(k + 1, j)] -= gw
    x = torch.linalg.solve(a, b)
    w_last = x[n + (n_r - 1) * n_c: n + n_r * n_c]
    return w_last * gw  # current through the last column segment into the sense amplifier
