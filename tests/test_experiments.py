"""Experiments at scale: experiment files, the grid, the resumable store, SIGKILL, concurrency, exports."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch

from nvcim.cli import main
from nvcim.errors import ConfigError, NvcimError
from nvcim.experiments import load_dataset, trained_model
from nvcim.experiments.export import export, table
from nvcim.experiments.runner import run
from nvcim.experiments.spec import from_dict, load_experiment
from nvcim.experiments.store import Store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SMALL = {"name": "small", "model": "mlp", "dataset": "digits", "chip": "rram-mlc-4bit", "chips": 8,
         "seeds": [0, 1], "methods": ["none", "self-tune"], "limit": 120,
         "sweep": {"device.programming.sigma": [0.05, 0.3], "circuit.adc_bits": [0, 5]}}


def _write(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d))
    return path


def _no_timing(result: dict) -> dict:
    r = json.loads(json.dumps(result))
    r["cost"].pop("wall_time_s", None)
    return r


def test_the_variance_format_is_part_of_a_points_identity():
    """A store shared by machines with and without bfloat16 must not mix their results under one key."""
    import torch

    from nvcim.chip.runtime import Runtime, native_bf16

    f32 = from_dict(dict(SMALL, variance="float32")).points()[0]
    bf16 = from_dict(dict(SMALL, variance="bfloat16")).points()[0]
    auto = from_dict(SMALL).points()[0]
    assert f32.identity()["numerics"] == {"variance": "float32", "draws": 3} and f32.key != bf16.key
    expect = "bfloat16" if native_bf16() and not torch.cuda.is_available() else "float32"
    assert auto.variance() == expect and auto.key == (bf16 if expect == "bfloat16" else f32).key
    assert Runtime(variance=auto.variance()).variance == expect
    with pytest.raises(ConfigError, match="variance"):
        from_dict(dict(SMALL, variance="float16"))


def test_grid_is_the_full_product_with_stable_keys():
    exp = from_dict(SMALL)
    pts = exp.points()
    assert len(pts) == 2 * 2 * 2 * 2
    assert len({p.key for p in pts}) == len(pts)
    assert [p.key for p in pts] == [p.key for p in from_dict(dict(SMALL, name="renamed")).points()]
    sig = {p.config.device.programming.sigma for p in pts}
    assert sig == {0.05, 0.3}


@pytest.mark.parametrize("change, field, allowed", [
    ({"chips": 0}, "chips", ">= 1"),
    ({"seeds": []}, "seeds", "non-empty"),
    ({"methods": ["none", "wrte-verify"]}, "methods", "chains of"),
    ({"sweep": {"device.programming.sigma": [0.1, -1.0]}}, "device.programming.sigma", "[0.0, 10.0]"),
    ({"sweep": {"device.programming.sgima": [0.1]}}, "device.programming.sgima", "Did you mean"),
    ({"options": {"rsa": {"fraction": 0.05}}}, "options.rsa", "a method named in 'methods'"),
    ({"chipss": 3}, "chipss", "Did you mean 'chips'"),
    ({"hwa": {"chip": "pcm", "epochs": 0}}, "hwa.epochs", ">= 1"),
    ({"hwa": {"chip": "pcm", "set": {"device.programming.sigma": -1.0}}}, "hwa: device.programming.sigma",
     "[0.0, 10.0]"),
    ({"hwa": {"chips": "pcm"}}, "hwa.chips", "one of chip, epochs, set"),
])
def test_bad_experiment_names_the_field(change, field, allowed):
    with pytest.raises(ConfigError) as e:
        from_dict(dict(SMALL, **change), origin="e.toml")
    assert field in str(e.value) and allowed in str(e.value) and "e.toml" in str(e.value)


def test_example_experiments_are_valid():
    files = sorted(EXAMPLES.glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        exp = load_experiment(f)
        assert exp.points(), f


def test_hardware_aware_model_is_trained_once_with_noise_and_shared_by_every_point(tmp_path):
    """``hwa``: every point starts from one model fine-tuned with noise injection on the hwa chip (cached),
    which differs from the plainly trained one; the hwa settings are part of each point's identity."""
    from nvcim.experiments.runner import _hwa_trained, _trained

    base = {"name": "hwa", "model": "mlp", "dataset": "digits", "chip": "rram-mlc-4bit", "chips": 4,
            "limit": 100, "sweep": {"device.programming.sigma": [0.1, 0.2]}}
    plain, hwa = from_dict(base), from_dict(dict(base, hwa={"chip": "rram-mlc-4bit", "epochs": 1}))
    assert all("hwa" not in p.identity() for p in plain.points())  # older stores keep their keys
    assert hwa.points()[0].identity()["hwa"]["epochs"] == 1
    assert {p.key for p in plain.points()}.isdisjoint({p.key for p in hwa.points()})
    summary = run(hwa, tmp_path / "run", progress=False, log=lambda _: None)
    assert summary.computed == 2 and not summary.failed
    key = json.dumps(hwa.hwa_identity(), sort_keys=True)
    net, info = _hwa_trained("mlp", "digits", 0, 0, key)
    assert Path(info["hwa"]["cache"]).is_file()
    ref, _ = _trained("mlp", "digits", 0, 0)
    moved = [float((a - b).abs().max()) for a, b in zip(net.state_dict().values(), ref.state_dict().values())]
    assert max(moved) > 1e-4  # noise-injection training changed the weights
    _hwa_trained.cache_clear()
    again, info2 = _hwa_trained("mlp", "digits", 0, 0, key)
    assert info2["hwa"]["cached"] and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                                            again.state_dict().values()))
    with Store(tmp_path / "run") as st:
        rows = st.rows()
    assert all(r["result"]["model"]["hwa_epochs"] == 1 for r in rows)


def test_run_stores_every_point_and_resumes_without_recomputing(tmp_path):
    exp = from_dict(SMALL)
    s1 = run(exp, tmp_path, progress=False)
    assert (s1.computed, s1.skipped, s1.failed) == (16, 0, [])
    with Store(tmp_path, readonly=True) as st:
        rows = st.rows()
    assert len(rows) == 16 and {r["key"] for r in rows} == {p.key for p in exp.points()}
    for r in rows:  # every row carries its config, seed, code version and timing
        assert r["config"]["device"]["programming"]["sigma"] == r["params"]["device.programming.sigma"]
        assert r["code_version"].startswith("0.") and r["wall_time_s"] > 0 and r["seed"] in (0, 1)
        assert len(r["result"]["accuracy"]["per_chip"]) == 8
        assert r["result"]["hardware"]["totals"]["arrays"] > 0
    s2 = run(exp, tmp_path, progress=False)
    assert (s2.computed, s2.skipped) == (0, 16)
    # a wider grid reuses the points it shares with the old one
    wider = from_dict(dict(SMALL, seeds=[0, 1, 2]))
    s3 = run(wider, tmp_path, progress=False)
    assert (s3.computed, s3.skipped) == (8, 16)


def test_points_do_not_depend_on_the_grid_around_them(tmp_path):
    """A point's result depends only on the point: alone or inside a bigger grid, the same numbers."""
    big = from_dict(SMALL)
    one = from_dict(dict(SMALL, seeds=[1], methods=["self-tune"], sweep={"device.programming.sigma": [0.3],
                                                                         "circuit.adc_bits": [5]}))
    run(big, tmp_path / "big", progress=False)
    run(one, tmp_path / "one", progress=False)
    a = {r["key"]: r["result"] for r in Store(tmp_path / "big", readonly=True).rows()}
    (key, res), = ((r["key"], r["result"]) for r in Store(tmp_path / "one", readonly=True).rows())
    assert _no_timing(a[key]) == _no_timing(res)


def _experiment_file(tmp_path: Path, **changes) -> Path:
    d = dict(SMALL, **changes)
    data = load_dataset("digits")
    trained_model("mlp", data, None, 0, progress=False)  # cached for the subprocesses
    return _write(tmp_path / "exp.json", d)


def _nvcim(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nvcim", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute("SELECT count(*) FROM points").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _check_store(db: Path, expected_keys: set) -> None:
    with closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [k for (k,) in c.execute("SELECT key FROM points")]
    assert len(keys) == len(set(keys)), "duplicated points"
    assert set(keys) == expected_keys, "lost or foreign points"


def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> list[int]:
    """Run, SIGKILL at a random moment after the first stored point, repeat ``kills`` times, then finish.
    Returns how many points were stored at each kill."""
    import random

    rnd = random.Random(seed)
    f = _experiment_file(tmp_path, seeds=[0, 1, 2], chips=16, limit=0)
    exp = load_experiment(f)
    keys = {p.key for p in exp.points()}
    out = tmp_path / "run"
    db = out / "results.sqlite"
    at_kill = []
    for _ in range(kills):
        before = _count(db)
        proc = _nvcim("run", str(f), "--out", str(out), "--quiet")
        deadline = time.time() + 120
        while _count(db) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.4))  # a random moment, often mid-point or mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill.append(_count(db))
        stored = _keys(db)
        assert set(stored) <= keys and len(stored) == len(set(stored))
        with closing(sqlite3.connect(db)) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    proc = _nvcim("run", str(f), "--out", str(out), "--quiet")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    done_before = at_kill[-1]
    assert f"{len(keys) - done_before} computed, {done_before} already in the store" in stdout
    _check_store(db, keys)
    return at_kill


def _keys(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as c:
        return [k for (k,) in c.execute("SELECT key FROM points")]


def test_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path):
    at_kill = kill_and_resume(tmp_path, kills=1, seed=0)
    assert 1 <= at_kill[0] < 24


def test_two_runs_on_one_store_share_the_work(tmp_path):
    f = _experiment_file(tmp_path, seeds=[0, 1, 2])
    keys = {p.key for p in load_experiment(f).points()}
    out = tmp_path / "run"
    a = _nvcim("run", str(f), "--out", str(out), "--quiet")
    b = _nvcim("run", str(f), "--out", str(out), "--quiet")
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    _check_store(out / "results.sqlite", keys)
    computed = [int(o.split(" computed")[0].rsplit(" ", 1)[-1]) for o, _ in outs]
    # claims keep the two runs from computing a point twice (a run started after the other finished a
    # point skips it; one that finds it claimed leaves it to the other)
    assert sum(computed) == len(keys)


def test_damaged_rows_are_detected_and_rerun(tmp_path):
    exp = from_dict(SMALL)
    run(exp, tmp_path, progress=False)
    db = tmp_path / "results.sqlite"
    with closing(sqlite3.connect(db)) as c:
        k1, k2 = [k for (k,) in c.execute("SELECT key FROM points LIMIT 2")]
        c.execute("UPDATE points SET result = replace(result, '\"mean\"', '\"maen\"') WHERE key = ?", (k1,))
        c.execute("UPDATE points SET result = substr(result, 1, 50) WHERE key = ?", (k2,))
        c.commit()
    s = run(exp, tmp_path, progress=False)
    assert s.computed == 2 and s.skipped == 14
    assert sum("checksum" in m for m in s.repaired) == 2
    _check_store(db, {p.key for p in exp.points()})


def test_a_corrupted_store_file_is_moved_aside_and_salvaged(tmp_path):
    exp = from_dict(SMALL)
    run(exp, tmp_path, progress=False)
    db = tmp_path / "results.sqlite"
    with closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(db.read_bytes())
    raw[:16] = b"garbage garbage!"  # the header: SQLite no longer recognises the file
    db.write_bytes(bytes(raw))
    s = run(exp, tmp_path, progress=False)
    assert any("corrupted" in m for m in s.repaired)
    assert s.computed + s.skipped == 16 and s.failed == []
    assert list(tmp_path.glob("results.sqlite.corrupt-*"))
    _check_store(db, {p.key for p in exp.points()})


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)]).returncode == 0


def test_read_only_run_folder_gets_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    mounted = _mount_tmpfs(ro, "ro,size=1m")
    if not mounted:
        os.chmod(ro, 0o555)  # not root: permissions make it read-only
    try:
        with pytest.raises(NvcimError, match="read-only"):
            run(from_dict(SMALL), ro / "run", progress=False)
        assert main(["run", str(_write(tmp_path / "e.json", SMALL)), "--out", str(ro), "--quiet"]) == 2
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)])


def test_disk_full_gets_a_clear_error_and_keeps_stored_points(tmp_path, monkeypatch):
    exp = from_dict(SMALL)
    full = tmp_path / "full"
    mounted = _mount_tmpfs(full, "size=160k")
    try:
        if mounted:
            s = run(exp, full, progress=False)
        else:  # not root: cap the database's size instead, SQLite reports the same SQLITE_FULL
            real = Store._connect

            def capped(self):
                db = real(self)
                db.execute("PRAGMA max_page_count = 24")
                return db

            monkeypatch.setattr(Store, "_connect", capped)
            s = run(exp, full, progress=False)
        assert s.failed and "no space left" in s.failed[0]
        assert 0 < s.computed < 16
        with closing(sqlite3.connect(full / "results.sqlite")) as c:
            assert c.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            assert c.execute("SELECT count(*) FROM points").fetchone()[0] == s.computed
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(full)])


def test_results_export_csv_json_parquet(tmp_path, capsys):
    run(from_dict(SMALL), tmp_path / "run", progress=False)
    rows = table(tmp_path / "run")
    assert len(rows) == 16 and all(0 <= r["accuracy_mean"] <= 1 for r in rows)
    for fmt in ("csv", "json", "parquet"):
        assert export(tmp_path / "run", tmp_path / f"out.{fmt}", per_chip=True) == 16
    import csv

    with open(tmp_path / "out.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert {r["key"] for r in csv_rows} == {r["key"] for r in rows}
    js = json.loads((tmp_path / "out.json").read_text())
    assert len(js[0]["per_chip"]) == 8 and "param.circuit.adc_bits" in js[0]
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "out.parquet")
    assert t.num_rows == 16 and "accuracy_kpp" in t.column_names
    assert main(["results", str(tmp_path / "run")]) == 0
    assert "16 points" in capsys.readouterr().out
    assert main(["results", str(tmp_path / "run"), "--export", str(tmp_path / "x.xlsx")]) == 2


def test_dry_run_prints_grid_and_estimate(tmp_path, capsys):
    f = _experiment_file(tmp_path)
    assert main(["run", str(f), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16 points, 0 done" in out and "estimated" in out and out.count("todo") == 16
    assert not (tmp_path / "run" / "results.sqlite").exists()


def test_a_failing_point_exits_nonzero_and_keeps_finished_points(tmp_path, monkeypatch, capsys):
    from nvcim.experiments import runner

    real = runner.compute_point
    calls = {"n": 0}

    def flaky(point, device="cpu", progress=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated worker crash")
        return real(point, device, progress)

    monkeypatch.setattr(runner, "compute_point", flaky)
    f = _write(tmp_path / "e.json", SMALL)
    assert main(["run", str(f), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    cap = capsys.readouterr()
    assert "simulated worker crash" in cap.out and "re-run resumes" in cap.err
    assert _count(tmp_path / "run" / "results.sqlite") == 2
