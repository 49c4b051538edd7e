import pytest

import nvcim
from nvcim.config import ChipConfig, dumps, load_config, override, parse_sets, preset, preset_names
from nvcim.errors import ConfigError, NvcimError


def test_presets_cite_sources_and_validate():
    names = preset_names()
    for required in ("ideal", "rram-mlc-4bit", "rram-sliced-1bit", "fefet-2bit", "pcm", "flash"):
        assert required in names
    for name in names:
        cfg = preset(name)
        assert cfg.name == name
        assert len(cfg.source) > 40, f"preset {name} must cite its source"


def test_charan_preset_values():
    cfg = preset("rram-mlc-4bit")
    assert cfg.device.programming.model == "lognormal" and cfg.device.programming.sigma == 0.1
    assert cfg.device.faults.sa0 == 0.0175 and cfg.device.faults.sa1 == 0.0904
    assert cfg.device.bits_per_cell == 4 and cfg.mapping.weight_bits == 0


@pytest.mark.parametrize("fmt", ["toml", "yaml", "json"])
def test_round_trip_every_preset(tmp_path, fmt):
    for name in preset_names():
        cfg = preset(name)
        path = tmp_path / f"{name}.{fmt}"
        nvcim.save_config(cfg, path)
        assert load_config(path) == cfg
        assert ChipConfig.from_dict(cfg.to_dict()) == cfg
        assert dumps(cfg, fmt)


@pytest.mark.parametrize("change, field, allowed", [
    ({"device.programming.sigma": -0.1}, "device.programming.sigma", "[0.0, 10.0]"),
    ({"device.levels": [1e-5]}, "device.levels", "at least 2 levels"),
    ({"device.g_min": 2e-4}, "device.g_min", "below g_max"),
    ({"device.faults.sa0": 1.5}, "device.faults.sa0", "[0.0, 1.0]"),
    ({"device.faults.sa1": -0.01}, "device.faults.sa1", "[0.0, 1.0]"),
    ({"device.read_noise": 2.0}, "device.read_noise", "[0.0, 1.0]"),
    ({"device.bits_per_cell": 9}, "device.bits_per_cell", "[1, 8]"),
    ({"circuit.adc_bits": 3.5}, "circuit.adc_bits", "integer"),
    ({"mapping.scheme": "quad"}, "mapping.scheme", "'differential', 'offset'"),
    ({"device.drift.t_read": 0.5}, "device.drift.t_read", "not before t0"),
])
def test_bad_values_name_field_and_range(change, field, allowed):
    with pytest.raises(ConfigError) as e:
        override(preset("rram-mlc-4bit"), change)
    assert e.value.path == field
    assert allowed in str(e.value) and field in str(e.value)


def test_fault_rates_must_sum_to_at_most_one():
    with pytest.raises(ConfigError, match="sa0 \\+ sa1 <= 1"):
        override(preset("ideal"), {"device.faults.sa0": 0.6, "device.faults.sa1": 0.6})


def test_unknown_preset_and_field_suggest_closest():
    with pytest.raises(NvcimError, match="Did you mean 'rram-mlc-4bit'"):
        preset("rram-mlc4bit")
    with pytest.raises(ConfigError, match="Did you mean 'device.programming.sigma'"):
        override(preset("ideal"), {"device.programming.sgima": 0.1})


def test_override_matches_command_line_set():
    base = preset("rram-mlc-4bit")
    a = override(base, {"device.programming.sigma": 0.25, "circuit.adc_bits": 6})
    b = override(base, parse_sets(["device.programming.sigma=0.25", "circuit.adc_bits=6"]))
    assert a == b and a.device.programming.sigma == 0.25 and a.circuit.adc_bits == 6
    assert base.device.programming.sigma == 0.1  # the original is untouched (frozen)


@pytest.mark.parametrize("fmt, text, where", [
    ("toml", "[device]\ng_min = = 1\n", "line 2"),
    ("json", '{"device": {"g_min": 1e-6,}}', "line 1"),
    ("yaml", "device:\n  g_min: [1,\n", "line"),
])
def test_malformed_files_report_the_line(tmp_path, fmt, text, where):
    p = tmp_path / f"bad.{fmt}"
    p.write_text(text)
    with pytest.raises(NvcimError, match=where):
        load_config(p)


def test_config_file_errors_name_the_file_and_field(tmp_path):
    p = tmp_path / "chip.toml"
    p.write_text("[device]\nbits_per_cell = 0\n[device.programming]\nsigma = -1\n")
    with pytest.raises(ConfigError, match="chip.toml: device.programming.sigma"):
        load_config(p)
