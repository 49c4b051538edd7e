"""The chip core's parts on their own: registries, mapping classes, the floorplan, the compile fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import lenet

import nvcim
from nvcim.chip import compiling
from nvcim.chip.geometry import TileGeometry
from nvcim.config import override, preset
from nvcim.devices import PROGRAMMING_MODELS, ProgrammingModel
from nvcim.errors import ConfigError, NvcimError
from nvcim.mapping import MAPPINGS, get_mapping


def test_a_device_model_registered_in_one_place_is_a_valid_config_value_and_programs_chips():
    """A new device model is one class: registered, it is allowed by the config and used by the chip."""

    class Doubling(ProgrammingModel):  # writes every cell at twice its target, clipped: easy to recognise
        name = "test-doubling"

        def sample(self, target, level, z_cell, z_chip):  # noqa: ANN001, ANN201
            return (2 * target).clamp(max=self.device.g_max)

    with pytest.raises(ConfigError, match="device.programming.model.*'lognormal'"):
        override(preset("ideal"), {"device.programming.model": "test-doubling"})
    PROGRAMMING_MODELS.register(Doubling)
    try:
        cfg = override(preset("ideal"), {"device.programming.model": "test-doubling"})
        m = nvcim.convert(lenet(), cfg, chips=2, seed=0)
        xb = m.analog_layers()[0].crossbar
        pos, _ = xb.nominal()
        expected = (2 * pos).clamp(max=cfg.device.g_max)
        assert torch.equal(xb.programmed()[0], expected.expand_as(xb.programmed()[0]))
    finally:
        PROGRAMMING_MODELS._classes.pop("test-doubling")
    with pytest.raises(ConfigError):
        override(preset("ideal"), {"device.programming.model": "test-doubling"})


def test_registries_name_the_field_the_choices_and_the_nearest():
    with pytest.raises(ConfigError) as e:
        MAPPINGS.get("diferential")
    msg = str(e.value)
    assert "mapping.scheme = 'diferential'" in msg and "'differential', 'offset'" in msg
    assert "Did you mean 'differential'" in msg
    with pytest.raises(NvcimError, match="Did you mean 'write-verify'"):
        nvcim.methods.get("write-verfy")


def test_mappings_answer_the_scheme_questions():
    diff = get_mapping(preset("rram-mlc-4bit"))
    off = get_mapping(override(preset("rram-mlc-4bit"), {"mapping.scheme": "offset", "array.cols": 4}))
    assert not diff.reference and diff.bit_slicing and off.reference and not off.bit_slicing
    # cells per logical row: a G+ and a G- column per output and slice; an output column each plus one
    # reference column per tile of 4 columns
    assert diff.array_columns(10, 2) == 40 and off.array_columns(10, 1) == 10 + 3
    neg = torch.arange(3.0).view(1, 3, 1)  # one reference cell per column tile
    assert off.expand_neg(neg, 10).view(-1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert diff.expand_neg(neg, 10) is neg
    w = torch.randn(5, 7)
    m = diff.map(w)
    back = diff.decode(m.pos - m.neg, m.scale, m.slice_weights)
    assert torch.allclose(back, w, atol=1e-6)  # the mapping's own decode undoes it (no levels, no noise)


def test_routing_must_permute_rows_within_their_tiles():
    g = TileGeometry(out_features=4, k=6, row_tiles=2, rows_per_tile=3, cols=128)
    assert g.tile_index().tolist() == [0, 0, 0, 1, 1, 1]
    ok = torch.tensor([[2, 0, 1, 5, 3, 4]])
    assert torch.equal(g.checked_routing("l", ok, 1), ok)
    with pytest.raises(NvcimError, match="within their tiles"):
        g.checked_routing("l", torch.tensor([[3, 1, 2, 0, 4, 5]]), 1)  # rows 0 and 3 swap tiles
    with pytest.raises(NvcimError, match="within their tiles"):
        g.checked_routing("l", torch.tensor([[0, 0, 1, 3, 4, 5]]), 1)  # row 0 twice
    with pytest.raises(NvcimError, match=r"shape \(2, 6\)"):
        g.checked_routing("l", ok, 2)


def test_a_failed_compile_warns_once_and_everything_runs_eager_from_then_on(monkeypatch):
    monkeypatch.setattr(compiling, "_failed", False)
    calls = []

    def broken(x):  # noqa: ANN001, ANN202
        calls.append("compiled")
        raise RuntimeError("no C++ compiler")

    def eager(x):  # noqa: ANN001, ANN202
        calls.append("eager")
        return x + 1

    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert compiling.compiled_or_eager(broken, eager, 1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert compiling.compiled_or_eager(broken, eager, 2) == 3
    assert calls == ["compiled", "eager", "eager"] and compiling.failed()
