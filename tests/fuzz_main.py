"""`make fuzz`: the reliability properties at scale, for a bounded time (FUZZ_SECONDS, default 240).

Targets: random config trees (valid ones must simulate with finite outputs, invalid ones must name their
field), bad values of every field, arbitrary text in TOML/YAML/JSON, and mutated IDX files (truncated,
bit-flipped, spliced, lying headers, wrong magic, corrupt gzip). Prints what was tried and what happened.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from properties import (  # noqa: E402
    FIELDS,
    bad_value_for,
    check_bad_value_property,
    check_config_property,
    check_idx_property,
    check_text_property,
    config_dicts,
    mutated_idx,
)

COUNTS: collections.Counter[str] = collections.Counter()
SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def rounds(name: str, make, seconds: float) -> None:  # type: ignore[no-untyped-def]
    end = time.time() + seconds
    while time.time() < end:
        make()()
    print(f"  {name}: done", flush=True)


def main() -> int:
    budget = float(os.environ.get("FUZZ_SECONDS", "240"))
    os.environ.setdefault("NVCIM_CACHE", tempfile.mkdtemp())
    tmp = Path(tempfile.mkdtemp())
    share = budget / 4
    start = time.time()

    def configs():  # type: ignore[no-untyped-def]
        @settings(max_examples=100, **SETTINGS)
        @given(config_dicts(max_fields=12))
        def prop(d):  # type: ignore[no-untyped-def]
            COUNTS["config " + check_config_property(d)] += 1
        return prop

    def bad_values():  # type: ignore[no-untyped-def]
        fields = [f for f in FIELDS if "doc" in f[2] and f[0] not in ("name", "source")]

        @settings(max_examples=300, **SETTINGS)
        @given(st.sampled_from(fields).flatmap(lambda f: st.tuples(st.just(f[0]), bad_value_for(*f), st.just(f[2]))))
        def prop(pv):  # type: ignore[no-untyped-def]
            check_bad_value_property(*pv)
            COUNTS["bad value rejected by name"] += 1
        return prop

    def texts():  # type: ignore[no-untyped-def]
        @settings(max_examples=500, **SETTINGS)
        @given(st.one_of(st.text(max_size=400), st.binary(max_size=400).map(lambda b: b.decode("latin-1"))),
               st.sampled_from(["toml", "yaml", "json"]))
        def prop(text, fmt):  # type: ignore[no-untyped-def]
            check_text_property(text, fmt)
            COUNTS[f"{fmt} text handled"] += 1
        return prop

    def idx():  # type: ignore[no-untyped-def]
        @settings(max_examples=500, **SETTINGS)
        @given(mutated_idx())
        def prop(data):  # type: ignore[no-untyped-def]
            COUNTS["idx " + check_idx_property(tmp, data)] += 1
        return prop

    print(f"fuzzing for {budget:.0f} s", flush=True)
    for name, make in (("configs", configs), ("bad values", bad_values), ("config text", texts), ("IDX", idx)):
        rounds(name, make, share)
    print(f"\n{sum(COUNTS.values())} inputs in {time.time() - start:.0f} s, no crash, hang or unclear error:")
    for k, v in sorted(COUNTS.items()):
        print(f"  {v:8d}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
