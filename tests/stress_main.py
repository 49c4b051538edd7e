"""`make stress`: runs killed with SIGKILL at random moments, many times, and concurrent runs on one store.

Prints how many points were stored at each kill and checks, after every kill and at the end, that the
store is intact with no lost and no duplicated point (STRESS_KILLS per round, default 8; STRESS_ROUNDS
rounds with different random moments, default 3; STRESS_RUNNERS concurrent runs, default 3).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    os.environ.setdefault("NVCIM_CACHE", tempfile.mkdtemp())
    from test_experiments import _check_store, _experiment_file, _nvcim, kill_and_resume

    from nvcim.experiments.spec import load_experiment

    kills = int(os.environ.get("STRESS_KILLS", "8"))
    n_rounds = int(os.environ.get("STRESS_ROUNDS", "3"))
    runners = int(os.environ.get("STRESS_RUNNERS", "3"))
    start = time.time()
    total = 0
    for r in range(n_rounds):
        tmp = Path(tempfile.mkdtemp())
        at_kill = kill_and_resume(tmp, kills=kills, seed=100 + r)
        total += kills
        print(f"round {r + 1}: SIGKILLs with {at_kill} of 24 points stored; resumed to 24/24, none lost or "
              f"duplicated", flush=True)
    tmp = Path(tempfile.mkdtemp())
    f = _experiment_file(tmp, seeds=[0, 1, 2, 3])
    keys = {p.key for p in load_experiment(f).points()}
    procs = [_nvcim("run", str(f), "--out", str(tmp / "run"), "--quiet") for _ in range(runners)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    _check_store(tmp / "run" / "results.sqlite", keys)
    computed = [int(o.split(" computed")[0].rsplit(" ", 1)[-1]) for o, _ in outs]
    assert sum(computed) == len(keys), computed
    print(f"{runners} concurrent runs on one store: {len(keys)} points, computed {computed} (sum {sum(computed)}), "
          "store intact")
    print(f"{total} SIGKILLs in {time.time() - start:.0f} s: nothing lost, nothing duplicated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
