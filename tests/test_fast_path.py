"""The converted model's own forward is the fast path: one compile policy for evaluate and user loops, and
compiling, batching or the call pattern never change a result."""

import logging
import os
import sys

import pytest
import torch
from helpers import lenet, linear

import nvcim
from nvcim.chip import Runtime, rng, warmup
from nvcim.chip import model as model_mod
from nvcim.config import override, preset

# multi-tile (64-row arrays) and bit-sliced cells: the general epilogue with its shift-and-add
SLICED = override(preset("rram-sliced-1bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8,
                                               "circuit.adc_bits": 8, "array.rows": 64})
MLC = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})


def _x(n=40, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [MLC, SLICED], ids=["mlc-flat", "sliced-general"])
def test_compiled_and_eager_chip_passes_are_the_same_to_the_bit(cfg):
    """So that whether a pass compiles (Runtime.compile="auto" decides by workload) changes no result."""
    x = _x(12)
    outs = []
    for mode in ("off", "on"):
        m = nvcim.convert(lenet(), cfg, chips=4, seed=1, runtime=Runtime(compile=mode, chip_block=2,
                                                                          variance="float32"))
        m.calibrate(x)
        with torch.no_grad():
            outs.append(m(x, read_key=3))
    assert torch.equal(outs[0], outs[1])


def test_a_plain_loop_over_chips_gives_evaluates_per_chip_accuracy_exactly():
    """evaluate keys the read noise by each image's position and by rng.key(seed, "evaluate"): a user loop
    that passes the same keys gets the same logits, whatever its batch size."""
    x = _x(40)
    m = nvcim.convert(lenet(), override(MLC, {"device.read_noise": 0.3}), chips=6, seed=2)
    y = m.digital(x).argmax(-1)  # labels the chips get partly right
    m.calibrate(x[:16])
    res = nvcim.evaluate(m, (x, y), batch_size=16, progress=False)
    key = rng.key(m.seed, "evaluate")
    for batch in (7, 40):
        correct = torch.zeros(6, dtype=torch.float64)
        for i in range(0, 40, batch):
            logits = m(x[i:i + batch], image_ids=torch.arange(i, min(i + batch, 40)), read_key=key)
            correct += (logits.argmax(-1) == y[i:i + batch]).sum(1)
        assert (correct / 40).tolist() == res.accuracy.per_chip
    assert len(set(res.accuracy.per_chip)) > 1  # the chips differ


def test_a_chip_pass_records_no_graph_unless_a_register_or_the_input_needs_one():
    m = nvcim.convert(lenet(), MLC, chips=2, seed=0)
    x = _x(4)
    m.calibrate(x)
    assert not m(x).requires_grad  # as a user writes it, without torch.no_grad()
    assert m(x.clone().requires_grad_(True)).requires_grad
    lay = m.analog_layers()[-1]
    lay.crossbar.tune_offset = lay.crossbar.tune_offset.clone().requires_grad_(True)
    out = m(x)
    out.sum().backward()
    assert lay.crossbar.tune_offset.grad is not None and lay.crossbar.tune_offset.grad.abs().sum() > 0


def test_auto_compile_policy_by_call_and_by_total_with_one_log_line(monkeypatch, fresh_cache):
    """Runtime.compile="auto" compiles a call that is large enough, or once the calls so far are, never
    when a gradient is being taken, and says so once. (The decision is checked without compiling.)"""
    decided = []

    def fake_pass(self, x, image_ids, read_key, compiled):
        decided.append(compiled)
        warmup.note("flat", ("uniform",), (torch.zeros(len(decided), 3),))  # a kernel no machine compiled
        return torch.zeros(self.chips, x.shape[0], 10)

    monkeypatch.setattr(model_mod.AnalogModel, "_chip_pass", fake_pass)
    monkeypatch.setattr(model_mod, "can_compile", lambda device: True)
    monkeypatch.setattr(warmup, "CHILD", [sys.executable, "-c", "import sys; sys.stdin.read()"])  # compiles nothing
    m = nvcim.convert(lenet(), MLC, chips=10, seed=0)
    m.calibrate(_x(4))
    per_image = m.profile(_x(1)).work_elements * m.chips
    monkeypatch.setattr(model_mod, "COMPILE_CALL_ELEMENTS", 10 * per_image)
    monkeypatch.setattr(model_mod, "COMPILE_TOTAL_ELEMENTS", 25 * per_image)
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("nvcim").addHandler(handler)
    try:
        m(_x(4))  # 4 images: small, 4 in all
        m(_x(12))  # a large call: recorded, its kernel compiled by a child (one that compiles nothing here)
        assert m._warmup is not None and m._warmup.records
        for p in m._warmup.procs:
            p.wait(timeout=60)
        assert m._warmup.ready
        for f in m._warmup.logs:  # the stand-in child leaves its (empty) log
            f.unlink(missing_ok=True)
        m(_x(4))  # small again, 20 in all
        m(_x(6))  # small, 26 in all: past the total
        m.analog_layers()[0].crossbar.sram_w = torch.zeros(10, 6, 25, requires_grad=True)
        m(_x(12))  # a gradient is being taken: eager
    finally:
        logging.getLogger("nvcim").removeHandler(handler)
    # the recorded pass takes a compiled pass's decisions (its kernels run eager): compiled=True
    assert decided == [False, True, False, True, False]
    assert sum("with torch.compile in the background" in msg for msg in said) == 1


def test_the_recorded_pass_notes_exactly_the_kernels_a_compiled_pass_calls(fresh_cache):
    """The background compile (nvcim.chip.warmup) compiles what the first large pass noted; that must be
    every kernel, with the layouts, that a compiled pass then asks for. Checked without compiling: the
    compiled kernels are replaced by eager ones that note their calls."""
    from nvcim.chip import compiling, kernel_cache

    asked: list = []

    def fake_compiled(name, static, lay):
        run = compiling.eager_kernel(name, static)
        return lambda *a: (asked.append((name, static, tuple(warmup._meta(v) for v in a))), run(*a))[1]

    x = _x(12)
    real = compiling._compiled_kernel
    for i, cfg in enumerate((MLC, SLICED)):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(fresh_cache / str(i))  # an empty ledger (the fixture resets)
        kernel_cache.forget()
        m = nvcim.convert(lenet(), cfg, chips=4, seed=1, runtime=Runtime(chip_block=2))
        m.calibrate(x)
        with torch.no_grad(), warmup.recording() as noted:
            recorded = m._chip_pass(x, None, 3, compiled=True)
        compiling._compiled_kernel = fake_compiled
        asked.clear()
        try:
            with torch.no_grad():
                compiled = m._chip_pass(x, None, 3, compiled=True)
        finally:
            compiling._compiled_kernel = real
        assert noted and {str(r) for r in noted} == {str(a) for a in asked}
        names = {r[0] for r in noted}
        assert "dac" in names and any(n.endswith("_tail") for n in names)  # the compiled pass's fused tails
        assert torch.equal(recorded, compiled)


def test_a_background_compile_switches_passes_to_compiled_with_the_same_numbers(monkeypatch, fresh_cache):
    """Runtime.compile="auto": the first large pass runs eager and starts the compiling child; passes stay
    eager until it is done, then run compiled, and every pass gives the same numbers."""

    monkeypatch.setattr(model_mod, "can_compile", lambda device: True)
    # one Linear layer: two kernels to compile (the DAC and the flat epilogue), so the test stays short
    m = nvcim.convert(linear(64, 8), MLC, chips=2, seed=1, runtime=Runtime(chip_block=2))
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(0))
    m.calibrate(x)
    monkeypatch.setattr(model_mod, "COMPILE_CALL_ELEMENTS", 0.0)
    with torch.no_grad():
        first = m(x, read_key=3)  # recorded
        w = m._warmup
        assert w is not None and w.records and w.procs
        for p, log in zip(w.procs, w.logs):
            assert p.wait(timeout=900) == 0, log.read_text()
        assert w.ready and m._compile_now(x) == "on"
        again = m(x, read_key=3)  # compiled
    assert torch.equal(first, again)
    # a model with the same layers: nothing left to compile (the ledger has its kernels), no child
    m2 = nvcim.convert(linear(64, 8), MLC, chips=2, seed=1, runtime=Runtime(chip_block=2))
    m2.calibrate(x)
    with torch.no_grad():
        m2(x, read_key=3)
    assert m2._warmup is not None and not m2._warmup.procs and m2._warmup.ready


def test_a_failed_background_compile_leaves_passes_eager_and_says_so(monkeypatch, caplog, fresh_cache):
    from nvcim.chip import warmup

    monkeypatch.setattr(model_mod, "can_compile", lambda device: True)
    monkeypatch.setattr(warmup, "CHILD", [sys.executable, "-c", "import sys; sys.exit('no compiler here')"])
    m = nvcim.convert(lenet(), override(MLC, {"device.read_noise": 0.01}), chips=2, seed=1)
    x = _x(8)
    m.calibrate(x)
    monkeypatch.setattr(model_mod, "COMPILE_CALL_ELEMENTS", 0.0)
    with torch.no_grad():
        first = m(x, read_key=3)
        for p in m._warmup.procs:
            p.wait(timeout=60)
        with caplog.at_level(logging.WARNING, logger="nvcim"):
            assert m._compile_now(x) == "off" and m._warmup.failed
            again = m(x, read_key=3)
    assert torch.equal(first, again)
    assert any("no compiler here" in r.getMessage() and str(m._warmup.logs[0]) in r.getMessage()
               for r in caplog.records)
    for f in m._warmup.logs:
        f.unlink(missing_ok=True)
