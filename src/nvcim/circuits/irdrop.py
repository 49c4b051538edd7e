"""IR drop on the crossbar wires: the transfer matrix of a tile, solved exactly or by a first-order model,
and a direct nodal solve to check both.

Geometry (all): a tile of R rows x C columns. Row k is driven at its left end (before column 0) with
voltage v_k; column j is held at virtual ground by its sense amplifier below row R-1 (after ``extra`` more
segments where the tile's rows sit at the top of a taller physical array: the column wire runs on past the
empty rows). Every wire segment between neighbouring cells, and between the last cell and the driver or the
sense amplifier, has resistance ``r`` (array.wire_resistance). Undriven rows (v_k = 0) are held at 0 V by
their drivers.

Why one matrix serves every input: the network is linear, so the column currents are I = T^T v for a
transfer matrix T (R x C, siemens) that depends on the conductances and r but not on v. The simulator reads
with T in place of the conductances; nothing about the input is assumed.

In cell currents i (R x C, per volt of drive) Kirchhoff's equations are (D^-1 + K) i = v 1^T, where D holds
the cells' conductances and K = K_row + K_col is the wires' resistance: the row wire's drop at cell j from
the currents of its row, r sum_j' (min(j, j') + 1) i_kj', plus the column wire's rise at row k from the
currents of its column, r sum_k' (R + extra - max(k, k')) i_k'j. T_kj is column j's current when row k
alone is driven at 1 V: the sum of the cell currents of column j (sneak currents through other rows'
cells included, with a negative sign where they leave the column).

:func:`exact_transfer` (``array.ir_solver = "exact"``, the default): that system solved by conjugate
gradients, one right-hand side per row (or, by reciprocity, per column, whichever is fewer), in the
symmetric form (1 + S K S) j = S v with S = D^(1/2) and i = S j. Its condition number is at most
1 + g_max lambda_max(K) (3.7 for 128 x 128 tiles at 2 Ohm and 100 uS, 14 at 10 Ohm), so it converges in
5-15 steps; it stops at a relative residual of ``IR_TOL``, which puts every column current within about
1e-4 of the nodal solve. The cost is min(R, C) R C per step, against R C for the first-order model.

:func:`attenuation` (``array.ir_solver = "first-order"``): T = G * a, a = 1 - delta(G * a) solved by
preconditioned Richardson steps a <- a + (1 - a - delta(G a)) / (1 + delta(G)) from the divider
1 / (1 + delta(G)), where delta is K's first-order drop at each cell from its own row's and its own
column's currents (:func:`drop_fraction`). It is exact to first order in r for every input, but leaves out
the coupling through the wires of *other* rows (a sneak current entering row k raises its other cells): on
128 x 128 tiles at 2 Ohm its column currents are up to 5 % off for ReLU inputs and 17 % for sparse ones.
Its error against the nodal solve, by input kind, resistance and tile size, is in docs/benchmarks.md
(``bench/bench_irdrop.py``).

History: until 2026-12-07 the column term was weighted by a reference activity (``array.ir_activity``,
default 0.5) and the factor was the divider 1 / (1 + delta); at 2 Ohm on a 32 x 32 tile that
underestimated the drop (5.2 % against 6.8 %) for every input. The first-order model replaced it on
2026-12-07, and the exact solve became the default later that day.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..config.schema import IR_SOLVERS

IR_STEPS = 10  # Richardson steps of the first-order model's self-consistent attenuation
IR_TOL = 1e-5  # relative residual at which the exact solve stops
IR_MAX_STEPS = 1000
IR_CHUNK = 1 << 22  # unknowns (right-hand sides x cells) solved at once: the solve's buffers stay ~16 MiB

log = logging.getLogger(__name__)


def wire_drop(x: Tensor, r: float, extra: int = 0) -> Tensor:
    """K x: the voltage the wires lose at each cell (row drop plus column rise, V) when the cells of a
    tile draw currents ``x`` (..., R, C) (A); ``extra`` segments of column wire below the last row."""
    s = x.cumsum(-1)
    row = (s[..., -1:] - s + x).cumsum(-1)  # current in the segment left of each cell, then its drop
    c = x.cumsum(-2)  # current in the column segment below each row
    cc = c.cumsum(-2)
    col = cc[..., -1:, :] - cc + c  # the rise: every segment below the row
    if extra:
        col = col + extra * c[..., -1:, :]
    return (row + col) * r


def drop_fraction(ga: Tensor, r: float, extra: int = 0) -> Tensor:
    """delta(ga): the first-order voltage lost at each cell, per volt of drive, when the cells carry the
    conductances ``ga`` (..., R, C): the row wire's drop from its driver plus the column wire's rise."""
    return wire_drop(ga, r, extra)


def attenuation(g: Tensor, r: float, steps: int = IR_STEPS, extra: int = 0) -> Tensor:
    """The first-order model's factor a in (0, 1], with transfer matrix T = g * a; ``g`` is ``(..., R, C)``
    in siemens, ``r`` in ohm per wire segment, ``extra`` column segments below the last row."""
    if r == 0:
        return torch.ones_like(g)
    pre = 1.0 + drop_fraction(g, r, extra)
    a = 1.0 / pre
    for _ in range(steps):
        a = a + (1.0 - a - drop_fraction(g * a, r, extra)) / pre
    return a.clamp(1e-6, 1.0)


def transfer(g: Tensor, r: float, solver: str = "exact", extra: int = 0) -> Tensor:
    """Transfer matrix T (..., R, C) in siemens of tiles of conductances ``g`` (..., R, C): column j's
    current per volt on row k. ``solver``: "exact" (:func:`exact_transfer`) or "first-order"
    (:func:`attenuation`)."""
    if r == 0:
        return g
    if solver == "first-order":
        return g * attenuation(g, r, extra=extra)
    if solver != "exact":
        raise ValueError(f"array.ir_solver must be one of {IR_SOLVERS}, got {solver!r}")
    t = exact_transfer(g, r, extra)
    if torch.is_grad_enabled() and g.requires_grad:
        # gradients (training on resistive wires) through the first-order model: its derivative is the
        # exact one to first order, and the solve's in-place steps are not differentiated
        first = g * attenuation(g, r, extra=extra)
        t = t + (first - first.detach())
    return t


@torch.no_grad()
def exact_transfer(g: Tensor, r: float, extra: int = 0, tol: float = IR_TOL,
                   max_steps: int = IR_MAX_STEPS) -> Tensor:
    """T (..., R, C) from Kirchhoff's equations solved by conjugate gradients (see the module docstring);
    ``g`` (..., R, C) in siemens, ``r`` ohm per segment, ``extra`` column segments below the last row."""
    shape = g.shape
    rows, cols = shape[-2], shape[-1]
    flat = g.reshape(-1, rows, cols)
    n = min(rows, cols)
    per = max(1, IR_CHUNK // max(1, n * rows * cols))
    out = torch.cat([_solve(flat[i: i + per], r, extra, tol, max_steps) for i in range(0, flat.shape[0], per)])
    return out.reshape(shape)


def _solve(g: Tensor, r: float, extra: int, tol: float, max_steps: int) -> Tensor:
    """:func:`exact_transfer` of tiles ``g`` (B, R, C)."""
    rows, cols = g.shape[-2:]
    by_rows = rows <= cols  # one right-hand side per row (drive it alone), else per column (reciprocity)
    n = rows if by_rows else cols
    s = g.clamp_min(0).sqrt().unsqueeze(1)  # (B, 1, R, C)
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    b = s * (eye.view(n, n, 1) if by_rows else eye.view(n, 1, n))  # (B, n, R, C): S times the drive

    buf = [torch.empty_like(b) for _ in range(4)]

    def apply(p: Tensor) -> Tensor:
        """(1 + S K S) p: :func:`wire_drop` in preallocated buffers (a third faster at these sizes)."""
        x = torch.mul(s, p, out=buf[3])
        sm = torch.cumsum(x, -1, out=buf[0])
        row = torch.cumsum(torch.sub(sm[..., -1:], sm, out=buf[1]).add_(x), -1, out=buf[0])
        c = torch.cumsum(x, -2, out=buf[1])
        cc = torch.cumsum(c, -2, out=buf[2])
        col = torch.sub(cc[..., -1:, :], cc, out=buf[2]).add_(c)
        if extra:
            col.add_(c[..., -1:, :], alpha=extra)
        return row.add_(col).mul_(r).mul_(s).add_(p)

    x = b.clone()  # start from the ideal wires' currents (j = S v)
    res = b - apply(x)
    p = res.clone()
    rr = (res * res).sum((-1, -2), keepdim=True)
    bb = (b * b).sum((-1, -2), keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    for _ in range(max_steps):
        if float((rr / bb).max()) <= tol * tol:
            break
        ap = apply(p)
        alpha = rr / (p * ap).sum((-1, -2), keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        x.add_(alpha * p)
        res.sub_(alpha * ap)
        rr_new = (res * res).sum((-1, -2), keepdim=True)
        p.mul_(rr_new / rr.clamp_min(torch.finfo(g.dtype).tiny)).add_(res)
        rr = rr_new
    else:
        log.warning("IR drop: the exact solve stopped at %d steps with relative residual %.1e (target %.0e)",
                    max_steps, float((rr / bb).max().sqrt()), tol)
    i = s * x  # cell currents, (B, n, R, C)
    return i.sum(-2) if by_rows else i.sum(-1).transpose(-1, -2)


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
