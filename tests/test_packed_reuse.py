"""Packed weights are kept between calls for the last chip block read, and only while its cells are
unchanged: a kept copy gives the numbers a fresh packing gives, and every change of the cells is seen."""

import torch
from helpers import lenet

import nvcim
from nvcim.chip import Runtime
from nvcim.config import override, preset

NOISY = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.05, "array.rows": 64})


def _x(n=12, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _fresh(m, x, key):
    """The output with nothing kept from an earlier call."""
    for lay in m.analog_layers():
        lay._packed_memo = None
    return m(x, read_key=key)


def _model(chips=3, block=0):
    m = nvcim.convert(lenet(), NOISY, chips=chips, seed=4, runtime=Runtime(compile="off", chip_block=block))
    m.calibrate(_x())
    return m


def test_kept_weights_are_reused_and_give_the_fresh_numbers():
    m, x = _model(), _x()
    with torch.no_grad():
        first = m(x, read_key=1)
        kept = [lay._packed_memo[2] for lay in m.analog_layers()]
        again = m(x, read_key=1)
        assert all(lay._packed_memo[2] is k for lay, k in zip(m.analog_layers(), kept))  # not packed again
        assert torch.equal(first, again)
        assert torch.equal(again, _fresh(m, x, 1))


def test_every_change_of_the_cells_is_seen():
    m, x = _model(), _x()
    lay = m.analog_layers()[0]
    with torch.no_grad():
        before = m(x, read_key=2)
        mask = torch.zeros_like(lay.crossbar.g_pos, dtype=torch.bool)
        mask[0, ..., :5] = True
        lay.crossbar.rewrite("pos", mask)  # a new tensor: chip 0's first rows re-programmed
        after = m(x, read_key=2)
        assert not torch.equal(after[0], before[0]) and torch.equal(after[1:], before[1:])
        assert torch.equal(after, _fresh(m, x, 2))
        lay.crossbar.g_neg[1].mul_(0.5)  # in place: the same tensor, a new version
        halved = m(x, read_key=2)
        assert not torch.equal(halved[1], after[1])
        assert torch.equal(halved, _fresh(m, x, 2))
        saved = lay.crossbar.checkpoint()
        lay.crossbar.rewrite("neg", torch.ones_like(mask))
        lay.crossbar.restore(saved, torch.ones(3, dtype=torch.bool))  # back to the checkpoint's tensors
        assert torch.equal(m(x, read_key=2), halved)


def test_several_blocks_pack_each_block_and_agree_with_one_block():
    many, one, x = _model(chips=5, block=2), _model(chips=5, block=5), _x()
    with torch.no_grad():
        y = many(x, read_key=3)
        assert torch.equal(y, many(x, read_key=3))  # blocks of 2, 2, 1: the kept block is never the next
        assert torch.equal(y, one(x, read_key=3))


def test_a_larger_model_is_planned_by_its_largest_layer_not_by_the_sum():
    """The activation peak counts each analog layer's tile outputs while that layer runs (they are freed
    before the next), so a deeper stack of equal layers peaks about as high; the work counts them all."""
    def stack(n):
        net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(n)])
        m = nvcim.convert(net, NOISY, chips=2, seed=0)
        return m.profile(torch.rand(4, 256))

    two, six = stack(2), stack(6)
    per_layer_work = (six.work_elements - two.work_elements) / 4
    assert per_layer_work > 0
    assert six.work_elements == two.work_elements + 4 * per_layer_work
    # the four extra layers add only their outputs (256 floats each) to the peak, not their transients
    assert six.peak_bytes - two.peak_bytes == 4 * 256 * 4.0
