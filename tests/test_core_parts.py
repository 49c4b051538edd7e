"""The chip core's parts on their own: registries, mapping classes, the floorplan, the compile fallback."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import ClassVar

import pytest
import torch
from helpers import lenet

import nvcim
from nvcim.chip import compiling
from nvcim.chip.geometry import TileGeometry
from nvcim.circuits import ADC_MODELS, ADCModel
from nvcim.config import ADCConfig, ChipConfig, ProgrammingConfig, dumps, override, preset
from nvcim.config.fields import spec
from nvcim.devices import PROGRAMMING_MODELS, ProgrammingModel
from nvcim.errors import ConfigError, NvcimError
from nvcim.mapping import MAPPINGS, get_mapping


@dataclasses.dataclass(frozen=True)
class ScalingConfig(ProgrammingConfig):  # a test device model's own config, with a field of its own
    model: ClassVar[str] = "test-scaling"
    factor: float = spec(2.0, "every cell lands at factor x its target", unit="-", lo=0.0, hi=4.0)


class Scaling(ProgrammingModel):  # writes every cell at factor x its target, clipped: easy to recognise
    config_type = ScalingConfig
    config: ScalingConfig

    def sample(self, target, level, z_cell, z_chip):  # noqa: ANN001, ANN201
        return (self.config.factor * target).clamp(max=self.device.g_max)


def test_a_device_model_with_its_own_fields_is_one_file_a_valid_config_and_programs_chips():
    """A new device model is a config class and a model class: registered, the config tree takes its
    name and its own field (checked against its range), files round-trip it, and the chip runs it."""
    with pytest.raises(ConfigError, match="device.programming.model.*'lognormal'"):
        override(preset("ideal"), {"device.programming.model": "test-scaling"})
    PROGRAMMING_MODELS.register(Scaling)
    try:
        cfg = override(preset("ideal"), {"device.programming.model": "test-scaling",
                                         "device.programming.factor": 1.5})
        assert cfg.device.programming == ScalingConfig(factor=1.5) and cfg.device.programming.model == "test-scaling"
        assert ChipConfig.from_dict(cfg.to_dict()) == cfg and "factor = 1.5" in dumps(cfg)
        with pytest.raises(ConfigError, match=r"device.programming.factor = 5.*\[0.0, 4.0\]"):
            override(cfg, {"device.programming.factor": 5.0})
        m = nvcim.convert(lenet(), cfg, chips=2, seed=0)
        xb = m.analog_layers()[0].crossbar
        pos, _ = xb.nominal()
        expected = (1.5 * pos).clamp(max=cfg.device.g_max)
        assert torch.equal(xb.programmed()[0], expected.expand_as(xb.programmed()[0]))
        rows = [r for r in nvcim.config.describe(ChipConfig) if r[0] == "device.programming.factor"]
        assert rows == [("device.programming.factor", 2.0, "[0.0, 4.0]", "[test-scaling] every cell lands at "
                         "factor x its target")]
    finally:
        PROGRAMMING_MODELS._classes.pop("test-scaling")
        PROGRAMMING_MODELS._by_config.pop(ScalingConfig)
    with pytest.raises(ConfigError):
        override(preset("ideal"), {"device.programming.model": "test-scaling"})


@dataclasses.dataclass(frozen=True)
class CoarseADCConfig(ADCConfig):  # a test ADC with a setting of its own
    model: ClassVar[str] = "test-coarse"
    merge: int = spec(2, "adjacent codes read as one (a power of 2)", unit="codes", lo=1, hi=64)


class CoarseADC(ADCModel):  # the uniform ADC with ``merge`` codes per step: log2(merge) bits fewer
    config_type = CoarseADCConfig
    config: CoarseADCConfig

    def quantize(self, y, delta, lo, hi):  # noqa: ANN001, ANN201
        m = self.config.merge
        return torch.clamp(torch.round(y / (delta * m)), lo // m, hi // m) * (delta * m)


def test_an_adc_model_with_its_own_setting_is_one_file_and_reaches_the_compiled_loops():
    """An ADC model's own field travels to the fused epilogue (eager and compiled) through its config's key:
    6 bits with 4 codes merged read exactly as a 4-bit uniform ADC."""
    base = override(preset("ideal"), {"device.bits_per_cell": 0, "circuit.adc_bits": 6, "circuit.adc_range": 0.25,
                                      "circuit.dac_range": 1.0})
    ADC_MODELS.register(CoarseADC)
    try:
        cfg = override(base, {"circuit.adc.model": "test-coarse", "circuit.adc.merge": 4})
        assert cfg.circuit.adc == CoarseADCConfig(merge=4) and cfg.circuit.adc_key.startswith('{"model": "test-coarse"')
        assert ChipConfig.from_dict(cfg.to_dict()) == cfg and "[circuit.adc]" in dumps(cfg)
        four_bits = override(base, {"circuit.adc_bits": 4})
        torch.manual_seed(0)
        net, x = torch.nn.Sequential(torch.nn.Linear(40, 12)), torch.rand(16, 40)

        def run(c: ChipConfig, mode: str = "off") -> torch.Tensor:
            m = nvcim.convert(copy.deepcopy(net), c, chips=2, seed=0, runtime=nvcim.Runtime(compile=mode))
            m.calibrate(x)
            return m(x)

        want = run(four_bits)
        for mode in ("off", "on"):
            assert torch.equal(run(cfg, mode), want), mode
        assert not torch.equal(run(base), want)  # 6 bits do differ
    finally:
        ADC_MODELS._classes.pop("test-coarse")
        ADC_MODELS._by_config.pop(CoarseADCConfig)
        ADC_MODELS._keyed.clear()


def test_older_files_name_the_converter_models_flat():
    """``circuit.adc_model`` / ``dac_model`` of older files and scripts: the typed sections' models."""
    old = {"circuit": {"adc_bits": 8, "adc_model": "symmetric", "dac_bits": 8, "dac_model": "symmetric"}}
    cfg = ChipConfig.from_dict(old)
    assert (cfg.circuit.adc_model, cfg.circuit.dac_model) == ("symmetric", "symmetric")
    assert cfg == override(ChipConfig(), {"circuit.adc_model": "symmetric",
                                                                        "circuit.dac_model": "symmetric",
                                                                        "circuit.adc_bits": 8, "circuit.dac_bits": 8})
    assert cfg.identity_dict()["circuit"]["adc_model"] == "symmetric" and "adc" not in cfg.identity_dict()["circuit"]
    with pytest.raises(ConfigError, match="circuit.adc_model.*absent when adc.model is set"):
        ChipConfig.from_dict({"circuit": {"adc_model": "symmetric", "adc": {"model": "uniform"}}})


def test_a_model_without_a_config_type_is_refused_and_replaces_nothing():
    class Forgot(ProgrammingModel):  # neither config_type nor name
        def sample(self, target, level, z_cell, z_chip):  # noqa: ANN001, ANN201
            return target

    with pytest.raises(TypeError, match="Forgot has no name"):
        PROGRAMMING_MODELS.register(Forgot)
    assert PROGRAMMING_MODELS.get("none").__name__ == "NoVariation"


def test_typed_sections_reject_the_fields_of_other_models_by_name():
    """A field that the chosen model does not have is an error naming the models that have it (before the
    split, a lognormal chip's middle_factor was accepted and did nothing)."""
    with pytest.raises(ConfigError) as e:
        override(preset("rram-mlc-4bit"), {"device.programming.middle_factor": 2.0})
    msg = str(e.value)
    assert "device.programming.middle_factor = 2.0" in msg and "a field of model 'lognormal': sigma, correct_bias" \
        in msg and "middle_factor belongs to model 'state-dependent'" in msg
    with pytest.raises(ConfigError, match="device.programming.sigma.*'none'.*belongs to model 'additive', "
                                          "'lognormal', 'pcm', 'state-dependent'"):
        override(preset("ideal"), {"device.programming.sigma": 0.1})
    with pytest.raises(ConfigError, match="mapping.weight_bits = 8.*scheme 'offset'.*belongs to scheme "
                                          "'differential'"):
        override(preset("rram-mlc-4bit"), {"mapping.scheme": "offset", "mapping.weight_bits": 8})
    with pytest.raises(ConfigError, match="device.drift.nu_mean.*model 'pcm'"):
        override(preset("pcm"), {"device.drift.nu_mean": 0.05})


def test_a_model_change_keeps_the_shared_fields_and_drops_the_old_models_own():
    fefet = preset("fefet-2bit")  # state-dependent: sigma 0.1, middle_factor 2
    logn = override(fefet, {"device.programming.model": "lognormal"})
    assert logn.device.programming == nvcim.devices.LognormalConfig(sigma=0.1)
    back = override(logn, {"device.programming.model": "state-dependent", "device.programming.middle_factor": 3})
    assert back.device.programming == nvcim.devices.StateDependentConfig(sigma=0.1, middle_factor=3.0)
    pcm = override(preset("pcm"), {"device.drift.model": "power-law", "device.drift.nu_mean": 0.05})
    assert (pcm.device.drift.nu_mean, pcm.device.drift.t_read) == (0.05, preset("pcm").device.drift.t_read)


def test_files_of_the_flat_sections_keep_loading():
    """A file written before the split holds every model's fields; those of other models load at their old
    defaults (the values they always had), and the config is the typed one."""
    flat = preset("rram-mlc-4bit").identity_dict()  # the flat shape, as 4eb76e7 wrote it
    assert set(flat["device"]["programming"]) == {"model", "sigma", "level_sigma", "middle_factor", "table",
                                                  "correct_bias"}
    assert set(flat["device"]["drift"]) == {"model", "nu_mean", "nu_std", "t0", "t_read", "compensate"}
    assert set(flat["mapping"]) == {"scheme", "weight_bits", "scaling", "clip_sigma"}
    assert ChipConfig.from_dict(flat) == preset("rram-mlc-4bit")
    flat["device"]["programming"]["middle_factor"] = 2.0  # set: it would have done nothing, so it is an error
    with pytest.raises(ConfigError, match="device.programming.middle_factor"):
        ChipConfig.from_dict(flat)


def test_point_keys_hold_across_the_typed_split():
    """Experiment-store keys hash the flat shape: the keys of these experiments, computed by the tree
    before the split (4eb76e7, tests/data/point_keys_4eb76e7.json), are the keys now, so older stores
    resume without recomputing."""
    import json
    from pathlib import Path

    from nvcim.config import preset_names
    from nvcim.experiments.spec import from_dict

    old = json.loads((Path(__file__).parent / "data" / "point_keys_4eb76e7.json").read_text())
    base = {"model": "mlp", "dataset": "digits", "chips": 8, "seeds": [0], "methods": ["none", "self-tune"],
            "limit": 120, "variance": "float32"}
    exps = [dict(base, name=n, chip=n, sweep={"circuit.adc_percentile": [99.9, 99.99],
                                              "mapping.clip_sigma": [0.0, 2.0]}) for n in preset_names()]
    exps.append(dict(base, name="models", chip="rram-mlc-4bit", sweep={
        "device.programming.model": ["lognormal", "additive", "pcm"], "device.programming.sigma": [0.05, 0.3],
        "mapping.scheme": ["differential", "offset"], "device.drift.nu_mean": [0.0, 0.05]}))
    new = {e["name"]: [p.key for p in from_dict(e).points()] for e in exps}
    # the IR-drop model changed on 2026-12-07: points on resistive wires (the flash preset) must not resume
    # as the old results, every other key holds
    wired = {n for n in preset_names() if preset(n).array.wire_resistance}
    assert wired == {"flash"}
    assert {n: k for n, k in new.items() if n not in wired} == {n: k for n, k in old.items() if n not in wired}
    assert all(set(new[n]).isdisjoint(old[n]) for n in wired) and len(old["models"]) == 3 * 2 * 2 * 2 * 2


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
    assert not diff.reference and off.reference and type(off.config.mapping).__name__ == "OffsetConfig"
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


def test_every_layer_kind_derives_from_the_analog_layer_directly():
    """No layer hierarchy deeper than two levels: each kind is AnalogLayer's child, and what kinds share
    (the 2-D convolution's or the matrix product's tiling) is a mixin that is not itself a layer."""
    from nvcim.chip import registry
    from nvcim.chip.layers import AnalogLayer

    kinds = [c for c in [*registry._CONVERTERS.values(), *(c for _, c in registry._MATCHERS)]
             if isinstance(c, type) and issubclass(c, AnalogLayer)]
    assert {k.__name__ for k in kinds} >= {"AnalogLinear", "AnalogConv2d", "AnalogConv1d", "AnalogConvTranspose2d",
                                            "AnalogTransposedLinear"}
    for kind in kinds:
        assert AnalogLayer in kind.__bases__, kind
        for base in kind.__mro__[1:]:
            assert base is AnalogLayer or not issubclass(base, AnalogLayer), (kind, base)
