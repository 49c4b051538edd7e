"""Seeds reproduce chips; results do not depend on batch size, chunking or chip count; save/load."""

import io

import pytest
import torch
from helpers import copy_of, lenet, linear

import nvcim
from nvcim.chip import Runtime
from nvcim.config import override, preset
from nvcim.experiments.models import build_model

NOISY = override(preset("flash"), {"device.faults.sa0": 0.01, "device.faults.sa1": 0.01,
                                   "variability.between_sigma": 0.05, "array.rows": 64})


def _x(n=24, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_chips_and_outputs():
    x = _x()
    a = nvcim.convert(lenet(), NOISY, chips=4, seed=11)
    b = nvcim.convert(lenet(), NOISY, chips=4, seed=11)
    c = nvcim.convert(lenet(), NOISY, chips=4, seed=12)
    for m in (a, b, c):
        m.calibrate(x)
    with torch.no_grad():
        ya, yb, yc = a(x, read_key=1), b(x, read_key=1), c(x, read_key=1)
    assert torch.equal(ya, yb)
    assert not torch.allclose(ya, yc)
    for la, lb in zip(a.analog_layers(), b.analog_layers()):
        xa, xb = la.crossbar, lb.crossbar
        assert torch.equal(xa.g_pos, xb.g_pos) and torch.equal(xa.faults_neg, xb.faults_neg)


def test_chip_k_does_not_depend_on_how_many_chips():
    few = nvcim.convert(lenet(), NOISY, chips=11, seed=5, runtime=Runtime(chip_block=4))
    many = nvcim.convert(lenet(), NOISY, chips=17, seed=5, runtime=Runtime(chip_block=4))
    for lf, lm in zip(few.analog_layers(), many.analog_layers()):
        xf, xm = lf.crossbar, lm.crossbar
        assert torch.equal(xf.g_pos, xm.g_pos[:11]) and torch.equal(xf.adc_gain, xm.adc_gain[:11])
    x = _x(9)
    few.calibrate(x)
    many.calibrate(x)
    with torch.no_grad():
        assert torch.equal(few(x, read_key=2), many(x, read_key=2)[:11])


def test_read_noise_is_fresh_per_call_but_keyed():
    m = nvcim.convert(lenet(), NOISY, chips=2, seed=0)
    x = _x(8)
    m.calibrate(x)
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))  # a real chip reads differently every time
        assert torch.equal(m(x, read_key=3), m(x, read_key=3))


def test_results_independent_of_chunking_and_batch_size():
    x = _x(30)
    m = nvcim.convert(lenet(), NOISY, chips=6, seed=2)
    m.calibrate(x)
    with torch.no_grad():
        full = m(x, read_key=9)
        m.runtime = Runtime(memory_mb=1.0)  # forces chip chunks of 1 and image sub-batches
        m._profiles.clear()
        assert m.plan(x)[1] < 30  # image sub-batches
        chunked = m(x, read_key=9)
        halves = torch.cat([m(x[:13], image_ids=torch.arange(13), read_key=9),
                            m(x[13:], image_ids=torch.arange(13, 30), read_key=9)], dim=1)
        m.runtime = Runtime(chip_block=6)  # every chip in one block (auto on a CPU: blocks of 10)
        one_block = m(x, read_key=9)
    assert torch.equal(full, chunked)
    assert torch.equal(full, halves)
    assert torch.equal(full, one_block) and m.runtime_record()["chip_block_resolved"] == 6


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("vgg", (1, 16, 16)), ("resnet", (3, 16, 16)),
                                        ("mobilenetv2", (1, 28, 28)), ("vit", (1, 28, 28))])
def test_analog_values_independent_of_batch_and_chip_block(name, shape):
    """Without converters nothing rounds the analog sums, so a last-bit difference in a matrix product (a BLAS
    kernel chosen by the call's shape) would show; with them it would flip an ADC code now and then."""
    torch.manual_seed(0)
    net = build_model(name, shape, 10).eval()
    x = torch.rand(11, *shape, generator=torch.Generator().manual_seed(0))
    cfg = override(NOISY, {"circuit.adc_bits": 0, "circuit.dac_bits": 0})
    m = nvcim.convert(net, cfg, chips=3, seed=2)
    m.calibrate(x)
    with torch.no_grad():
        full = m(x, read_key=9)
        halves = torch.cat([m(x[:5], image_ids=torch.arange(5), read_key=9),
                            m(x[5:], image_ids=torch.arange(5, 11), read_key=9)], dim=1)
        m.runtime = Runtime(chip_block=1)
        m._profiles.clear()
        one_by_one = m(x, read_key=9)
    assert torch.equal(full, halves)
    assert torch.equal(full, one_by_one)


def test_evaluate_independent_of_batch_size():
    x = _x(60)
    y = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(1))
    m = nvcim.convert(lenet(), NOISY, chips=5, seed=3)
    r1 = nvcim.evaluate(m, (x, y), batch_size=7, progress=False)
    r2 = nvcim.evaluate(m, (x, y), batch_size=60, progress=False)
    assert r1.accuracy.per_chip == r2.accuracy.per_chip
    assert r1.ideal_accuracy == r2.ideal_accuracy


def test_state_dict_round_trip_restores_programmed_chips():
    ref = lenet()
    x = _x(10)
    a = nvcim.convert(copy_of(ref), NOISY, chips=4, seed=21)
    a.calibrate(x)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    # a fresh conversion with other chips, another seed and another config: load restores everything
    b = nvcim.convert(copy_of(ref), preset("ideal"), chips=2, seed=99)
    b.load_state_dict(state)
    assert b.chips == 4 and b.seed == 21 and b.config == NOISY
    with torch.no_grad():
        assert torch.equal(a(x, read_key=4), b(x, read_key=4))


def test_a_state_dict_saved_before_the_crossbar_held_the_state_loads():
    """Models saved when a layer's cells, registers and converter ranges were its own buffers (keys
    ``net.0.g_pos``, ``net.0.dac_fs``) load into today's layers, whose crossbar and converters own them."""
    ref = lenet()
    x = _x(10)
    a = nvcim.convert(copy_of(ref), NOISY, chips=3, seed=5)
    a.calibrate(x)
    old = {}
    for key, value in a.state_dict().items():
        for part in (".crossbar.", ".converters."):
            key = key.replace(part, ".")
        old[key] = value
    assert "net.0.g_pos" in old and "net.0.dac_fs" in old and not any("crossbar" in k for k in old)
    b = nvcim.convert(copy_of(ref), preset("ideal"), chips=2, seed=99)
    b.load_state_dict(old)
    with torch.no_grad():
        assert torch.equal(a(x, read_key=4), b(x, read_key=4))


def test_compiled_and_eager_epilogue_agree():
    from nvcim.chip.context import EpilogueOperands, ReadNoiseOperands
    from nvcim.chip.kernel import analog_epilogue, epilogue

    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 7, 3, 2, 1, 5, generator=g)
    var = torch.rand(4, 7, 3, 2, 1, 5, generator=g) * 0.01
    ck = torch.randint(-2**31, 2**31 - 1, (3,), dtype=torch.int32, generator=g)
    ik = torch.randint(-2**31, 2**31 - 1, (4,), dtype=torch.int32, generator=g)
    ops = EpilogueOperands(None, None, torch.full((2, 1, 5), 0.05), -128, 127, torch.ones(1), torch.ones(3, 5),
                           torch.zeros(5), None)
    args = (y, ReadNoiseOperands(var, ck, ik), ops)
    eager = analog_epilogue(*args)
    fused = epilogue(True)(*args)
    assert torch.equal(eager, fused)  # the same IEEE operations in the same order: the same bits


def test_linear_layer_accepts_extra_dimensions():
    m = nvcim.convert(linear(k=16, o=4), NOISY, chips=3, seed=0)
    x = torch.randn(5, 7, 16)
    m.calibrate(x)
    with torch.no_grad():
        assert m(x).shape == (3, 5, 7, 4)


def test_single_tile_epilogue_is_the_general_one_element_for_element():
    from nvcim.chip.kernel import _single_tile_epilogue, general_epilogue

    g = torch.Generator().manual_seed(0)
    b, n_l, c, o = 5, 7, 3, 6
    y = torch.randn(b, n_l, c, 1, 1, o, generator=g) * 4
    var = torch.rand(b, n_l, c, 1, 1, o, generator=g)
    ck = torch.randint(-2**31, 2**31 - 1, (c,), generator=g, dtype=torch.int64).to(torch.int32)
    ik = torch.randint(-2**31, 2**31 - 1, (b,), generator=g, dtype=torch.int64).to(torch.int32)
    gain, offset = 1 + 0.1 * torch.randn(c, 1, 1, o, generator=g), 0.1 * torch.randn(c, 1, 1, o, generator=g)
    delta = 0.05 + torch.rand(1, 1, o, generator=g)
    args = (y, var, ck, ik, gain, offset, delta, -127, 127, torch.tensor([0.7]), torch.rand(c, o, generator=g),
            torch.randn(o, generator=g))
    torch.testing.assert_close(_single_tile_epilogue(*args), general_epilogue(*args), rtol=0, atol=0)
    bare = (y, None, None, None, None, None, None, 0, 0, torch.tensor([1.0]), torch.ones(c, o), None)
    torch.testing.assert_close(_single_tile_epilogue(*bare), general_epilogue(*bare), rtol=0, atol=0)


def test_single_tile_epilogue_in_position_innermost_memory_is_the_same():
    """A one-channel convolution returns NCHW memory; the epilogue then loops positions innermost (``cm``),
    which must change nothing, compiled or eager."""
    from nvcim.chip.kernel import _single_tile_epilogue, epilogue, general_epilogue

    g = torch.Generator().manual_seed(1)
    b, n_l, c, o = 3, 20, 2, 5
    cm = torch.randn(b, c * o, n_l, generator=g) * 4  # memory (B, CO, L)
    y = cm.transpose(1, 2).reshape(b, n_l, c, 1, 1, o)  # a strided view, positions innermost
    var = torch.rand(b, c * o, n_l, generator=g).transpose(1, 2).reshape(b, n_l, c, 1, 1, o)
    assert y.stride()[1] == 1
    ck = torch.randint(-2**31, 2**31 - 1, (c,), generator=g, dtype=torch.int64).to(torch.int32)
    ik = torch.randint(-2**31, 2**31 - 1, (b,), generator=g, dtype=torch.int64).to(torch.int32)
    args = (y, var, ck, ik, None, None, torch.full((1, 1, o), 0.05), -127, 127, torch.tensor([1.0]),
            torch.rand(c, o, generator=g), torch.randn(o, generator=g))
    ref = general_epilogue(y.contiguous(), var.contiguous(), *args[2:])
    torch.testing.assert_close(_single_tile_epilogue(*args), ref, rtol=0, atol=0)
    from nvcim.chip.context import EpilogueOperands, ReadNoiseOperands

    fused = epilogue(True)(y, ReadNoiseOperands(var, ck, ik), EpilogueOperands(None, None, *args[6:], None))
    assert (fused - ref).abs().max() <= 0.05 + 1e-6 and ((fused - ref).abs() > 1e-6).float().mean() < 0.02


def test_retain_heap_takes_effect_on_glibc_and_is_a_no_op_elsewhere():
    import platform
    import sys

    from nvcim.chip.heap import retain_heap

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert retain_heap() is glibc
    assert retain_heap() is glibc  # idempotent


def test_compiled_dac_is_the_eager_dac_bit_for_bit_and_keeps_the_layout():
    from nvcim.chip.compiling import dac_kernel
    from nvcim.circuits import dac

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(20, 6, 14, 14, generator=g) * 2).contiguous(memory_format=torch.channels_last)
    fs = torch.tensor(1.7)
    for bits, signed in ((8, True), (4, False), (1, True)):
        with torch.no_grad():
            got = dac_kernel("uniform", bits, signed)(x, fs)
        want = dac(x, fs, bits, signed)
        assert torch.equal(got, want) and got.stride() == x.stride()


def _programmed(model, names=("g_pos", "g_neg", "faults_pos", "faults_neg", "drift_pos", "drift_neg", "drift_comp")):
    return [getattr(layer.crossbar, n).clone() for layer in model.analog_layers() for n in names]


def test_programming_is_the_same_compiled_or_eager_and_in_any_chunking(monkeypatch):
    """The compiled write (faults, lognormal or additive write, drift) gives the eager write's bits, also
    through a row routing, and a chip does not depend on how many chips are written together."""
    from nvcim.chip import programming

    monkeypatch.setattr(programming, "COMPILE_MIN", 1)  # compile even these small blocks
    pcm = override(preset("pcm"), {"device.faults.sa0": 0.02, "device.faults.sa1": 0.02, "array.rows": 64})
    for cfg in (pcm, NOISY):
        eager = nvcim.convert(lenet(), cfg, chips=5, seed=4, runtime=Runtime(compile="off"))
        compiled = nvcim.convert(lenet(), cfg, chips=5, seed=4, runtime=Runtime(compile="on"))
        for a, b in zip(_programmed(eager), _programmed(compiled)):
            assert torch.equal(a, b)
        layer = eager.analog_layers()[1]
        assert layer.crossbar.faults_pos.float().mean() > 0.02  # the faults were drawn (4 % expected)
        for m in (eager, compiled):  # a routing moves the faults and drift with the physical rows
            for lay in m.analog_layers():
                lay.crossbar.row_perm = torch.stack([torch.randperm(lay.k, generator=torch.Generator().manual_seed(i))
                                            for i in range(5)])
            m.program(torch.arange(5))
        for a, b in zip(_programmed(eager), _programmed(compiled)):
            assert torch.equal(a, b)
        one_by_one = _programmed(eager)
        for lay in eager.analog_layers():
            lay.crossbar.program(4, torch.arange(5), chunk=2)
        for a, b in zip(one_by_one, _programmed(eager)):
            assert torch.equal(a, b)


def test_cells_made_on_demand_are_the_stored_cells_and_save_without_them():
    """On demand, each pass writes its chip block's cells from the same counter-based draws: the outputs,
    accuracies and drift compensation are the stored chips' to the bit, and a saved model holds no cells."""
    x = _x(20)
    y = torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(2))
    array_var = override(NOISY, {"variability.scope": "array"})
    for cfg in (override(preset("pcm"), {"device.faults.sa1": 0.02}), array_var):
        kept = nvcim.convert(lenet(), cfg, chips=7, seed=3, runtime=Runtime(cells="stored", chip_block=3))
        made = nvcim.convert(lenet(), cfg, chips=7, seed=3, runtime=Runtime(cells="on-demand", chip_block=3))
        assert made.cells_on_demand and not kept.cells_on_demand
        for m in (kept, made):
            m.calibrate(x)
        with torch.no_grad():
            ref = kept(x, read_key=5)
            assert torch.equal(made(x, read_key=5), ref)
        lay_k, lay_m = kept.analog_layers()[2], made.analog_layers()[2]
        assert torch.equal(lay_k.crossbar.drift_comp, lay_m.crossbar.drift_comp)
        assert lay_m.crossbar.g_pos.shape[0] == 3  # only the last block's cells are held
        assert torch.equal(lay_m.crossbar.g_pos, lay_k.crossbar.g_pos[[6, 6, 6]])  # the last block: chip 6, padded
        r_k = nvcim.evaluate(kept, (x, y), batch_size=7, progress=False)
        r_m = nvcim.evaluate(made, (x, y), batch_size=7, progress=False)
        assert r_k.accuracy.per_chip == r_m.accuracy.per_chip
        buf = io.BytesIO()
        torch.save(made.state_dict(), buf)
        assert buf.tell() < 0.1 * sum(t.numel() * t.element_size() for t in kept.state_dict().values()
                                      if isinstance(t, torch.Tensor))
        buf.seek(0)
        loaded = nvcim.convert(lenet(), preset("ideal"), chips=1)
        loaded.load_state_dict(torch.load(buf, weights_only=True))
        assert loaded.cells_on_demand
        with torch.no_grad():
            assert torch.equal(loaded(x, read_key=5), ref)


def test_auto_chip_block_and_budget_resolve_per_device(monkeypatch):
    """Runtime.chip_block = 0 and memory_mb = 0 (auto): blocks of 10 chips and a 384 MiB sub-batch cap on a
    CPU, as before; on a GPU a quarter of its free memory each, the chips split into the fewest equal blocks.
    A GPU is stood in for here (the device property and its free memory); tests/test_devices.py runs the real
    one where there is one."""
    from nvcim.chip import runtime as runtime_mod
    from nvcim.chip.conversion import state_bytes_per_chip

    m = nvcim.convert(lenet(), NOISY, chips=100, seed=0)
    assert (m.chip_block(), m.activation_budget()) == (10, 384 * 2**20)
    m.runtime = Runtime(chip_block=7, memory_mb=100)
    assert (m.chip_block(), m.activation_budget()) == (7, 100 * 2**20)
    m.runtime = Runtime()
    per_chip = 3 * state_bytes_per_chip(m)
    free = {"bytes": 4 * 64 * per_chip + 3}  # a quarter holds 64 chips
    monkeypatch.setattr(type(m), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(runtime_mod, "gpu_free_bytes", lambda device: free["bytes"])
    assert m.chip_block() == 50  # two equal blocks, not 64 and a padded 36
    assert m.activation_budget() == free["bytes"] / 4
    free["bytes"] = 10**15
    assert m.chip_block() == 100  # every chip in one block
    free["bytes"] = per_chip
    assert m.chip_block() == 1
    m.runtime = Runtime(chip_block=7, memory_mb=100)
    assert (m.chip_block(), m.activation_budget()) == (7, 100 * 2**20)  # explicit values stand on a GPU


@pytest.mark.parametrize("chips,most,block", [(100, 64, 50), (100, 100, 100), (100, 1, 1), (1000, 300, 250),
                                              (7, 3, 3), (10, 10**6, 10), (5000, 5000, 2500)])
def test_even_blocks_split_chips_into_the_fewest_equal_blocks(chips, most, block):
    from nvcim.chip.runtime import even_blocks

    got = even_blocks(chips, most)
    assert got == block
    n = -(-chips // got)
    assert got <= min(most, 4096) and n == -(-chips // min(most, 4096, chips))  # the fewest blocks
    assert n * got - chips < n  # padding: less than one chip per block

