"""IR-drop solvers against the nodal solve (sparse LU, float64): the error on every column current, by tile
size, wire resistance and input kind, for the exact solve (``array.ir_solver = "exact"``, the default, run
in float32 as the simulator runs it), the first-order model (``"first-order"``) and the activity-weighted
divider of before 2026-12-07; and the time of each solver per tile. Writes bench/results/irdrop.md (the
table in docs/benchmarks.md).

    .venv/bin/python bench/bench_irdrop.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from nvcim.circuits import attenuation, exact_transfer, nodal_column_currents

G_MIN, G_MAX = 1e-6, 1e-4


def old_model(g: torch.Tensor, r: float, activity: float = 0.5) -> torch.Tensor:
    row = g.flip(-1).cumsum(-1).flip(-1).cumsum(-1)
    col = (activity * g.cumsum(-2)).flip(-2).cumsum(-2).flip(-2)
    return 1.0 / (1.0 + r * (row + col))


def conductances(kind: str, rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return G_MIN + (G_MAX - G_MIN) * torch.rand(rows, cols, generator=gen, dtype=torch.float64)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)  # one side of a differential pair
    return G_MIN + (G_MAX - G_MIN) * w.clamp_min(0) / w.abs().max()


def inputs(kind: str, rows: int, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.rand(rows, n, generator=gen, dtype=torch.float64)
    if kind == "relu":
        return torch.randn(rows, n, generator=gen, dtype=torch.float64).clamp_min(0)
    if kind == "sparse":
        v = (torch.rand(rows, n, generator=gen, dtype=torch.float64) < 0.1).double()
        v[torch.randint(rows, (n,), generator=gen), torch.arange(n)] = 1.0
        return v
    x = torch.tensor(load_digits().data[:n], dtype=torch.float64).T / 16.0
    return x.repeat(-(-rows // 64), 1)[:rows]


def solver_times(g: torch.Tensor, r: float) -> list[float]:
    """ms per call of the exact solve and of the first-order model on tile ``g`` (one warm-up each)."""
    out = []
    for f in (lambda: exact_transfer(g, r), lambda: g * attenuation(g, r)):
        f()
        t0 = time.perf_counter()
        for _ in range(3):
            f()
        out.append((time.perf_counter() - t0) / 3 * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the small tiles only")
    args = ap.parse_args()
    shapes = [(32, 32), (64, 64), (128, 32), (128, 128), (256, 32), (256, 64)]
    if args.quick:
        shapes = shapes[:3]
    kinds = ["random", "relu", "digits", "sparse"]
    lines = [f"IR-drop solvers vs nodal solve, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
             f"`python bench/bench_irdrop.py`. Max |I_model - I_exact| / I_exact over columns and 48 inputs "
             "(percent). exact: the conjugate-gradient solve in float32, max over every input kind; then the "
             "first-order model / the activity-0.5 divider, by input kind. Uniform conductances in [1, 100] uS "
             "(mapped Gaussian weights in brackets). Time: ms per tile, float32, 2 threads.", "",
             "| tile | ohm | drop (random) | exact, all inputs | " +
             " | ".join(f"{k} first-order / old" for k in kinds) + " | ms exact / first-order |",
             "|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    for rows, cols in shapes:
        for r in (1.0, 2.0, 5.0, 10.0):
            cells = []
            drop = 0.0
            exact_err = {"uniform": 0.0, "mapped": 0.0}
            times = [0.0, 0.0]
            for k in kinds:
                errs = []
                for gk in ("uniform", "mapped"):
                    gen = torch.Generator().manual_seed(rows * 7 + cols)
                    g = conductances(gk, rows, cols, gen)
                    v = inputs(k, rows, 48, gen)
                    exact = nodal_column_currents(g, v, r)
                    if k == "random" and gk == "uniform":
                        drop = 1 - float(exact.sum() / (g.T @ v).sum())
                        times = solver_times(g.float(), r)
                    t_exact = exact_transfer(g.float(), r).double()
                    exact_err[gk] = max(exact_err[gk],
                                        100 * float(((t_exact.T @ v - exact).abs() / exact).max()))
                    for t in (g * attenuation(g, r), g * old_model(g, r)):
                        errs.append(100 * float(((t.T @ v - exact).abs() / exact).max()))
                cells.append(f"{errs[0]:.2f} / {errs[1]:.2f} ({errs[2]:.2f} / {errs[3]:.2f})")
            lines.append(f"| {rows}x{cols} | {r:g} | {100 * drop:.1f} % | {exact_err['uniform']:.3f} "
                         f"({exact_err['mapped']:.3f}) | " + " | ".join(cells) +
                         f" | {times[0]:.1f} / {times[1]:.2f} |")
            print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "irdrop.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
