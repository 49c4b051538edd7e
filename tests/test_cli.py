"""The command line end to end: demo, evaluate, train, presets; result.json; Fashion-MNIST."""

import copy
import json
from pathlib import Path

import pytest
import torch

import nvcim
from nvcim.cli import main
from nvcim.experiments import load_dataset, trained_model

REQUIRED = ("ideal_accuracy", "accuracy", "chips", "images", "seed", "wall_time_s", "config")


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def test_demo_writes_result_and_histogram(tmp_path, capsys):
    assert main(["demo", "--chips", "120", "--out", str(tmp_path), "--quiet"]) == 0
    res = _result(tmp_path)
    for key in REQUIRED:
        assert key in res
    acc = res["accuracy"]
    assert len(acc["per_chip"]) == 120
    assert set(("mean", "std", "kpp", "per_chip", "ci95", "kpp_ci95")) <= set(acc)
    assert res["ideal_accuracy"] > 0.85  # the digital LeNet-5 on digits
    degraded = res["degraded_accuracy"]
    assert degraded["mean"] < res["ideal_accuracy"] - 0.3  # Charan's faults and variation hurt a lot untrained
    assert acc["min"] <= acc["kpp"] <= acc["mean"]
    # the demo also shows the answer: the best cheap chain wins most of the loss back
    assert res["recovery_ratio"] > 0.8 and acc["mean"] > degraded["mean"] + 0.5
    trials = res["auto_trials"]
    assert len(trials) == 3 and sum(t["chosen"] for t in trials) == 1
    assert res["auto_check_metric"]["name"] == "top1" and res["metric"]["name"] == "top1"
    for name in ("accuracy_hist.png", "demo.png", "pareto.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert nvcim.load_config(tmp_path / "chip.toml") == nvcim.preset("rram-mlc-4bit")
    out = capsys.readouterr().out
    assert "ideal" in out and "±" in out and "worst 1 %" in out and "recovered" in out and "Pareto" in out
    assert "100.0 % of the matrix weights on the chip" in out  # what ran on the chip, said
    assert res["analog_share"] == 1.0 and res["conversion"]["digital"] == []


def test_result_json_matches_python_api(tmp_path):
    assert main(["evaluate", "--model", "mlp", "--chips", "10", "--chip", "ideal", "--out", str(tmp_path),
                 "--quiet", "--seed", "1"]) == 0
    res = _result(tmp_path)
    data = load_dataset("digits")
    model, _ = trained_model("mlp", data, seed=1, progress=False)
    api = nvcim.evaluate(nvcim.convert(model, "ideal", chips=10, seed=1), data.test, progress=False)
    d = api.to_dict()
    assert set(d) <= set(res)
    assert res["accuracy"]["per_chip"] == d["accuracy"]["per_chip"]
    assert res["accuracy"]["mean"] == pytest.approx(res["ideal_accuracy"])  # ideal chips are the model
    # the performance switches are part of every result, the one that changes numbers resolved
    rt = res["runtime"]
    assert {"memory_mb", "chip_block", "compile", "cells", "retain_heap", "variance", "draws"} <= set(rt)
    assert rt["variance"] == "auto" and rt["variance_resolved"] in ("float32", "bfloat16")
    # what ran on the chip: the MLP's three Linear layers, 100 % of its matrix weights
    assert res["analog_share"] == 1.0 and [k for _, k in res["conversion"]["converted"]] == ["Linear"] * 3
    assert res["conversion"]["analog_weights"] == sum(p.numel() for p in model.parameters() if p.dim() == 2)


def test_set_overrides_and_bad_set_fails_cleanly(tmp_path, capsys):
    assert main(["evaluate", "--model", "mlp", "--chips", "5", "--out", str(tmp_path), "--quiet",
                 "--set", "device.programming.sigma=0.3", "--set", "circuit.adc_bits=6"]) == 0
    cfg = _result(tmp_path)["config"]
    assert cfg["device"]["programming"]["sigma"] == 0.3 and cfg["circuit"]["adc_bits"] == 6
    assert main(["evaluate", "--chips", "5", "--out", str(tmp_path), "--set", "device.faults.sa1=1.2"]) == 2
    err = capsys.readouterr().err
    assert "device.faults.sa1" in err and "[0.0, 1.0]" in err and "Traceback" not in err


def test_config_file_and_user_import_paths(tmp_path, monkeypatch, capsys):
    cfg_file = tmp_path / "chip.yaml"
    nvcim.save_config(nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.faults.sa1": 0.0}), cfg_file)
    mod = tmp_path / "usercode.py"
    mod.write_text(
        "import torch\nfrom torch import nn\n"
        "def model(in_shape, classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.rand(200, 1, 8, 8, generator=g); y = (x.mean((1, 2, 3)) > 0.5).long()\n"
        "    return (x[:150], y[:150]), (x[150:], y[150:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert main(["evaluate", "--model", "usercode:model", "--dataset", "usercode:data", "--chip", str(cfg_file),
                 "--chips", "8", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    res = _result(out)
    assert res["images"] == 50 and res["config"]["device"]["faults"]["sa1"] == 0.0


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    for name in nvcim.preset_names():
        assert name in listing
    assert main(["presets", "rram-sliced-1bit", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["mapping"]["weight_bits"] == 8
    assert main(["presets", "nope"]) == 2
    assert main(["fields"]) == 0
    assert "device.g_min" in capsys.readouterr().out


def test_fashion_mnist_end_to_end(tmp_path):
    # CI installs Debian's dataset-fashion-mnist; this test must not pass without it.
    root = Path("/usr/share/datasets/fashion-mnist")
    assert root.is_dir(), "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
    data = load_dataset("fashion-mnist")
    assert data.train[0].shape == (60000, 1, 28, 28) and data.test[0].shape == (10000, 1, 28, 28)
    assert main(["evaluate", "--model", "mlp", "--dataset", "fashion-mnist", "--epochs", "1", "--chips", "20",
                 "--limit", "2000", "--chip", "pcm", "--out", str(tmp_path), "--quiet"]) == 0
    res = _result(tmp_path)
    assert res["images"] == 2000 and len(res["accuracy"]["per_chip"]) == 20
    assert res["ideal_accuracy"] > 0.75
    assert 0.5 < res["accuracy"]["mean"] <= res["ideal_accuracy"] + 0.02


def test_recover_command_writes_cost_and_recovery_ratio(tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(["recover", "--chip", "rram-sliced-1bit", "--method", "write-verify+self-tune",
                 "--opt", "write-verify.fraction=0.1", "--chips", "10", "--check", "300", "--out", str(out),
                 "--quiet"]) == 0
    res = _result(out)
    assert res["methods"] == ["write-verify", "self-tune"]
    assert res["cost"]["check_samples"] == 300  # the guard judged on exactly the --check examples
    assert res["cost"]["verified_fraction"] == pytest.approx(0.1, abs=0.002)
    assert res["cost"]["write_verify_pulses"] > 0 and res["cost"]["calibration_samples"] == 256
    assert res["recovery_ratio"] > 0.5 and res["accuracy"]["mean"] > res["degraded_accuracy"]["mean"]
    assert "recovery ratio" in capsys.readouterr().out
    assert main(["recover", "--method", "write-verify", "--opt", "self-tune.samples=3", "--chips", "2",
                 "--out", str(out), "--quiet"]) == 2
    assert "not in --method" in capsys.readouterr().err
    assert main(["recover", "--method", "self-tune", "--check", "0", "--chips", "2", "--out", str(out),
                 "--quiet"]) == 2
    assert "--check 0 is invalid: allowed 1 .. " in capsys.readouterr().err
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in ("vat", "qvat", "kd", "rsa", "write-verify", "self-tune", "chip-kd", "map-correct"):
        assert name in listing


def test_device_option_names_the_bad_value_and_what_is_allowed(tmp_path, capsys):
    args = ["evaluate", "--model", "mlp", "--chips", "2", "--limit", "20", "--quiet", "--out", str(tmp_path)]
    assert main([*args, "--device", "tpu"]) == 2
    assert "--device = 'tpu' is invalid: allowed auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bad = "cuda" if n == 0 else f"cuda:{n}"  # a GPU this machine does not have
    assert main([*args, "--device", bad]) == 2
    assert f"--device = '{bad}' is invalid" in capsys.readouterr().err
    assert main([*args, "--device", "cpu"]) == 0
    assert len(json.loads((tmp_path / "result.json").read_text())["accuracy"]["per_chip"]) == 2


def test_variance_option_reaches_the_runtime_and_bad_values_are_named(tmp_path, capsys):
    args = ["evaluate", "--model", "mlp", "--chips", "4", "--limit", "120", "--quiet", "--seed", "1",
            "--set", "device.read_noise=0.05", "--out", str(tmp_path)]
    data = load_dataset("digits")
    model, _ = trained_model("mlp", data, seed=1, progress=False)
    test = (data.test[0][:120], data.test[1][:120])
    for v in ("float32", "bfloat16"):
        assert main([*args, "--variance", v]) == 0
        cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.05})
        api = nvcim.convert(copy.deepcopy(model), cfg, chips=4, seed=1, runtime=nvcim.Runtime(variance=v))
        api.calibrate(data.train[0][:256])
        assert _result(tmp_path)["accuracy"]["per_chip"] == nvcim.evaluate(api, test, progress=False).accuracy.per_chip
    with pytest.raises(SystemExit) as e:
        main([*args, "--variance", "half"])
    assert e.value.code == 2
    assert "invalid choice: 'half'" in capsys.readouterr().err
