"""Compile work outlives the process (issue #40): the kernel ledger beside inductor's cache, the background
compile that goes on after its parent exits, and the hybrid pass that runs what this machine compiled before
compiled at once. Real compiles: each test points inductor at an empty cache folder of its own."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from nvcim.chip import compiling, kernel_cache

ROOT = Path(__file__).resolve().parents[1]

# one Linear layer on the bench chip's converters: two kernels (the DAC and the flat epilogue), so that a cold
# compile stays short
SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    import nvcim
    from nvcim.chip import Runtime
    from nvcim.chip import model as model_mod
    from torch._dynamo.utils import counters

    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8,
                                                         "circuit.adc_bits": 8})
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 8))
    m = nvcim.convert(net, cfg, chips=2, seed=1, runtime=Runtime(chip_block=2))
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(0))
    m.calibrate(x)
    model_mod.COMPILE_CALL_ELEMENTS = 0.0  # this small pass counts as one that repays compiling
    model_mod.can_compile = lambda device: True
    with torch.no_grad():
        out = m(x[: int(sys.argv[1])], read_key=3)
    w = m._warmup
    print(json.dumps({"left": len(w.records), "children": len(w.procs), "out": out.flatten().tolist(),
                      "fx": dict(counters["inductor"])}))
""")


def _run(batch: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(batch)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(cache) -> int:
    folder = cache / "nvcim-kernels"
    return sum(1 for f in folder.iterdir() if len(f.name) == 32) if folder.exists() else 0


def test_a_background_compile_outlives_its_process_and_the_next_process_runs_compiled_at_once(fresh_cache):
    """A script that exits right after its first large pass leaves its kernels compiling; once they are in
    the ledger, a new process runs its first pass compiled from inductor's cache (every graph a cache hit,
    no child), with a sub-batch of another size, and with the same numbers as the eager pass."""
    first = _run(8)
    assert first["left"] == 2 and first["children"] >= 1  # the DAC and the flat epilogue, not compiled yet
    deadline = time.time() + 900
    while _entries(fresh_cache) < 2 and time.time() < deadline:  # the parent is gone; its children go on
        time.sleep(2)
    assert _entries(fresh_cache) == 2
    second = _run(6)  # another batch size: the batch dimension is compiled symbolic
    assert second["left"] == 0 and second["children"] == 0
    assert second["fx"].get("fxgraph_cache_hit", 0) == 2 and second["fx"].get("fxgraph_cache_miss", 0) == 0
    # the same draws: the first 6 images of the eager pass (images are keyed by their position)
    eager6 = torch.tensor(first["out"]).view(2, 8, 8)[:, :6]
    assert torch.equal(eager6, torch.tensor(second["out"]).view(2, 6, 8))


def test_the_ledger_keys_a_kernel_by_its_layout_without_the_batch_size():
    """One entry serves every sub-batch: the batch operands' leading size is left out (but 1, which dynamo
    always specialises, is kept), and anything else that changes the graph changes the key."""
    def key(*args, static=("uniform",)):
        return compiling.kernel_key("flat", static, [kernel_cache.meta(a) for a in args])[0]

    def ops(b, co=60):
        return (torch.zeros(b, 1, co), torch.zeros(b, 1, co), torch.zeros(b, co, dtype=torch.int32))

    assert key(*ops(140)) == key(*ops(80)) == key(*ops(2))
    assert key(*ops(1)) != key(*ops(2))
    assert key(*ops(140, co=84)) != key(*ops(140))
    assert key(*ops(140), static=("midrise",)) != key(*ops(140))
    y, v, k = ops(140)
    assert key(y.transpose(1, 2), v, k) != key(y, v, k)  # strides
    assert key(y.double(), v, k) != key(y, v, k)  # dtype


def test_the_ledger_keys_a_kernel_by_the_code_it_traces(tmp_path, monkeypatch):
    """An entry written by other kernel code promises nothing: a change in any file the loops trace
    changes the digest, and with it every key."""
    root = tmp_path / "nvcim"
    for d in ("chip", "circuits", "devices"):
        (root / d).mkdir(parents=True)
        (root / d / "a.py").write_text("x = 1\n")
    (root / "arith.py").write_text("y = 2\n")
    monkeypatch.setattr(kernel_cache, "__file__", str(root / "chip" / "kernel_cache.py"))

    def digest():
        kernel_cache.source_digest.cache_clear()
        return kernel_cache.source_digest()

    before = digest()
    (root / "circuits" / "a.py").write_text("x = 3\n")
    changed = digest()
    (root / "devices" / "b.py").write_text("")
    added = digest()
    kernel_cache.source_digest.cache_clear()
    monkeypatch.undo()
    assert len({before, changed, added}) == 3
    lay = kernel_cache.layout("flat", ("uniform",), [], ())
    monkeypatch.setattr(kernel_cache, "source_digest", lambda: before)
    k1 = kernel_cache.key(lay, 2)
    monkeypatch.setattr(kernel_cache, "source_digest", lambda: changed)
    assert kernel_cache.key(lay, 2) != k1


def test_operands_become_tensors_of_their_own_with_the_same_values():
    """A sub-batch view is traced as a plain tensor (a view's base and a storage offset would give a graph
    that a background compile on fresh tensors never stored)."""
    base = torch.rand(500, 6, 28, 28).permute(0, 2, 3, 1)
    for view in (base[:140], base[140:280]):
        own = compiling._own_storage(view)
        assert not own._is_view() and own.storage_offset() == 0
        assert own.stride() == view.stride() and torch.equal(own, view)
    first = compiling._own_storage(base[:140])
    assert first.data_ptr() == base.data_ptr()  # no copy where the memory starts at the storage's start
    plain = torch.rand(3, 4)
    assert compiling._own_storage(plain) is plain


def test_a_kernel_claimed_by_one_compiling_process_is_skipped_by_another(fresh_cache):
    """Children of one background compile share the list: a kernel another process holds is skipped at once
    (and waited for at the end)."""
    code = textwrap.dedent("""
        import sys, time
        from nvcim.chip import kernel_cache
        with kernel_cache.claim("k" * 32, wait=False) as mine:
            print(mine, flush=True)
            time.sleep(float(sys.argv[1]))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    holder = subprocess.Popen([sys.executable, "-c", code, "30"], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
    try:
        with kernel_cache.claim("k" * 32, wait=False) as mine:
            assert mine is False
        with kernel_cache.claim("j" * 32, wait=False) as mine:
            assert mine is True
    finally:
        holder.kill()
        holder.wait()
    with kernel_cache.claim("k" * 32, wait=True) as mine:  # released with its process
        assert mine is True


def test_a_ledger_that_cannot_be_written_costs_time_not_results(tmp_path, monkeypatch):
    """An inductor cache folder that cannot be made (here: under a file): nothing is known, entering a kernel
    and claiming one do not fail, so a pass runs and its kernels compile in the background as before."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker / "inductor"))
    kernel_cache.forget()
    try:
        assert kernel_cache.directory() is None
        assert not kernel_cache.known("k" * 32)
        kernel_cache.mark("j" * 32, ["flat", [], []])  # remembered in this process only
        assert kernel_cache.known("j" * 32) and not (blocker / "inductor").exists()
        with kernel_cache.claim("k" * 32, wait=False) as mine:
            assert mine is True
    finally:
        kernel_cache.forget()
