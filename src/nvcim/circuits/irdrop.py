"""IR drop on the crossbar wires: a self-consistent model for simulation and an exact nodal solve to check it.

Geometry (both): a tile of R rows x C columns. Row k is driven at its left end (before column 0) with
voltage v_k; column j is held at virtual ground by its sense amplifier below row R-1. Every wire segment
between neighbouring cells, and between the last cell and the driver or the sense amplifier, has resistance
``r`` (array.wire_resistance). Undriven rows (v_k = 0) are held at 0 V by their drivers.

Why one matrix serves every input: the network is linear, so the column currents are I = T^T v for a
transfer matrix T (R x C, siemens) that depends on the conductances and r but not on v. The simulator reads
with T = G * a (:func:`attenuation` gives a); nothing about the input is assumed.

The model (:func:`attenuation`): to first order in r, with the ideal currents i_kj = G_kj v_k, row segment j
of row k carries sum_{j'>=j} i_kj' and column segment below row k' carries sum_{k''<=k'} i_k''j. The drop
that input k causes at its own cells, plus the rise that every input k'' causes on column j (which, by
symmetry of the column kernel r (R - max(k, k'')), is the same as input k's effect on the other cells of the
column: the sneak currents), is delta_kj(G) = r sum_{j'<=j} sum_{j''>=j'} G_kj'' + r sum_k'' G_k''j
(R - max(k, k'')). That is exact to first order for *every* input, since each term is linear in its own
input. Beyond first order the currents that cause the drops are themselves attenuated: a solves
a = 1 - delta(G * a), by preconditioned Richardson steps a <- a + (1 - a - delta(G a)) / (1 + delta(G))
started from the divider 1 / (1 + delta(G)) (``IR_STEPS`` of them; converged to < 1e-4 at 10 Ohm on
256-row tiles). It leaves out the second-order coupling through the wires of *other* rows (a sneak current
entering row k raises its other cells), which matters for sparse inputs on wide arrays. Its error against
the nodal solve, by input kind, resistance and tile size, is in docs/benchmarks.md
(``bench/bench_irdrop.py``) and held by tests/test_irdrop.py.

Until 2026-12-07 the column term was weighted by a reference activity (``array.ir_activity``, default 0.5)
and the factor was the divider 1 / (1 + delta): at 2 Ohm on a 32 x 32 tile that underestimated the drop
(5.2 % against 6.8 %) for every input, because a column's rise is caused by each input in proportion to
itself, which the activity weighting mixed up.
"""

from __future__ import annotations

import torch
from torch import Tensor

IR_STEPS = 10  # Richardson steps of the self-consistent attenuation


def drop_fraction(ga: Tensor, r: float) -> Tensor:
    """delta(ga): the first-order voltage lost at each cell, per volt of drive, when the cells carry the
    conductances ``ga`` (..., R, C): the row wire's drop from its driver plus the column wire's rise."""
    row_seg = ga.flip(-1).cumsum(-1).flip(-1)  # current in the row segment left of cell j (unit drive)
    row_drop = row_seg.cumsum(-1)
    col_seg = ga.cumsum(-2)  # current in the column segment below row k
    col_rise = col_seg.flip(-2).cumsum(-2).flip(-2)
    return r * (row_drop + col_rise)


def attenuation(g: Tensor, r: float, steps: int = IR_STEPS) -> Tensor:
    """Factor a in (0, 1] with transfer matrix T = g * a; ``g`` is ``(..., R, C)`` in siemens, ``r`` in ohm
    per wire segment. The same for every input (the network is linear)."""
    if r == 0:
        return torch.ones_like(g)
    pre = 1.0 + drop_fraction(g, r)
    a = 1.0 / pre
    for _ in range(steps):
        a = a + (1.0 - a - drop_fraction(g * a, r)) / pre
    return a.clamp(1e-6, 1.0)


def nodal_column_currents(g: Tensor, v: Tensor, r: float) -> Tensor:
    """Exact column currents (A) of one R x C tile by solving Kirchhoff's equations (sparse LU, float64).

    ``g`` (R, C) in siemens; ``v`` (R,) or (R, B) row voltages (B inputs at once); returns (C,) or (C, B).
    Unknowns are the row-wire node voltages u_kj and column-wire node voltages w_kj (2RC of them). Meant for
    validation (up to a few hundred rows and columns), not for simulation.
    """
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    gn = g.detach().to(torch.float64).cpu().numpy()
    vn = v.detach().to(torch.float64).cpu().numpy()
    one = vn.ndim == 1
    vn = vn.reshape(vn.shape[0], -1)
    n_r, n_c = gn.shape
    n, gw = n_r * n_c, 1.0 / r
    k, j = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
    u, w, gc = (k * n_c + j).ravel(), (n + k * n_c + j).ravel(), gn.ravel()
    kk, jj = k.ravel(), j.ravel()
    rows, cols, vals = [], [], []

    def add(i: np.ndarray, q: np.ndarray, x: np.ndarray | float) -> None:
        rows.append(i)
        cols.append(q)
        vals.append(np.broadcast_to(x, i.shape))

    # row node (k, j): the segment to the left (to the driver at j = 0), the one to the right, the cell
    add(u, u, gw + gc)
    m = jj > 0
    add(u[m], u[m] - 1, -gw)
    m = jj < n_c - 1
    add(u[m], u[m], gw)
    add(u[m], u[m] + 1, -gw)
    add(u, w, -gc)
    # column node (k, j): the cell, the segment below (to the sense amplifier at k = R-1), the one above
    add(w, w, gc + gw)
    add(w, u, -gc)
    m = kk > 0
    add(w[m], w[m], gw)
    add(w[m], w[m] - n_c, -gw)
    m = kk < n_r - 1
    add(w[m], w[m] + n_c, -gw)
    a = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(2 * n, 2 * n))
    b = np.zeros((2 * n, vn.shape[1]))
    b[np.arange(n_r) * n_c] = gw * vn  # drivers feed the first row node of each row
    x = spl.splu(a).solve(b)
    out = torch.from_numpy(x[n + (n_r - 1) * n_c: n + n_r * n_c] * gw)  # the last column segment's current
    return out[:, 0] if one else out
