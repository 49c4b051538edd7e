"""Reports in a real headless browser, impact analysis, the hardware cost model, and the Ray executor."""

import copy
import math
import os
import re
import shutil
import subprocess

import pytest
import torch
from helpers import lenet, linear
from torch import nn

import nvcim
from nvcim.cli import main
from nvcim.evaluation.hardware import hardware_cost
from nvcim.experiments.analyze import analyze
from nvcim.experiments.report import write_report
from nvcim.experiments.runner import run
from nvcim.experiments.spec import from_dict
from nvcim.experiments.store import Store

EVIL = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
GRID = {"name": "report-" + EVIL, "model": "mlp", "dataset": "digits", "chip": "rram-mlc-4bit", "chips": 12,
        "seeds": [0], "methods": ["none", "self-tune"], "limit": 150,
        "sweep": {"device.programming.sigma": [0.05, 0.3], "device.drift.compensate": [False, True]}}


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found and os.environ.get("NVCIM_REQUIRE_BROWSER"):
        pytest.fail("NVCIM_REQUIRE_BROWSER is set but no chromium is installed")
    return found


def _headless(browser: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    run(from_dict(GRID), d / "run", progress=False)
    return d, write_report(d / "run")


def test_report_has_figures_table_and_escapes_user_strings(report):
    d, page = report
    text = page.read_text()
    assert EVIL not in text and "<script" not in text
    assert "&lt;img src=x onerror=" in text
    figs = sorted(p.name for p in page.parent.iterdir())
    for stem in ("sweep_device_programming_sigma", "sweep_device_drift_compensate", "histograms"):
        assert f"{stem}.png" in figs and f"{stem}.svg" in figs
    assert text.count("data:image/png;base64,") == 3  # self-contained: figures are inlined
    svg = (page.parent / "sweep_device_programming_sigma.svg").read_text()
    # readable figures: axis labels with units, and a legend per method
    assert "test accuracy (%)" in svg and "within-chip (cell-to-cell) spread (dimensionless)" in svg
    assert "self-tune (compensate=False): mean" in svg and "none (compensate=True): worst 1 %" in svg
    assert "ideal (digital)" in svg
    assert "recovery ratio" in text and "WV pulses/chip" in text


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it and sets NVCIM_REQUIRE_BROWSER)")
    d, page = report
    dom = _headless(browser, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert title.startswith("nvcim report: report-&lt;img")  # no injected handler or script ran
    assert "<script" not in html and "onerror=" not in html.replace("&lt;img src=x onerror=", "")
    assert html.count("<img") == 3 and html.count("<tr>") >= 5
    shot = tmp_path / "shot.png"
    r = _headless(browser, tmp_path, "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri())
    assert r.returncode == 0 and shot.is_file()
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img[..., :3].std() > 0.05  # a page with figures, not a blank one


def test_report_of_an_empty_or_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(nvcim.NvcimError, match="no results store"):
        write_report(tmp_path / "nothing")
    Store(tmp_path / "empty").close()
    with pytest.raises(nvcim.NvcimError, match="no finished points"):
        write_report(tmp_path / "empty")


# ---- hardware cost --------------------------------------------------------------------------------

def test_hardware_cost_counts_tiles_cells_and_conversions():
    cfg = nvcim.override(nvcim.preset("ideal"), {"array.rows": 128, "array.cols": 128, "circuit.adc_bits": 6})
    model = nvcim.convert(linear(300, 100), cfg, chips=1)
    hc = hardware_cost(model, torch.zeros(1, 300), write_verify_pulses=500)
    (lay,) = hc.layers
    assert lay.arrays == 3 * 2  # ceil(300/128) row tiles x ceil(2*100/128) column arrays
    assert lay.cells == 300 * 200 and lay.cells_per_weight == 2.0
    assert lay.utilisation == pytest.approx(60000 / (6 * 128 * 128))
    assert lay.adc_conversions == 3 * 100 and lay.dac_drives == 300 * 2 and lay.digital_adds == 100 * 2
    c = cfg.cost
    e = 300 * c.adc_energy_pj * 2 ** -2 + 600 * c.dac_energy_fj * 1e-3 * 2 ** 7 \
        + 60000 * c.cell_read_energy_fj * 1e-3 + 200 * c.digital_add_pj
    assert lay.energy_pj == pytest.approx(e)
    assert lay.latency_ns == pytest.approx(max(c.array_read_ns, math.ceil(300 / 6) / c.adc_rate_gsps))
    assert hc.programming_time_s == pytest.approx((60000 + 500) * c.write_step_us * 1e-6)
    # bit slicing: 8-bit weights on 1-bit cells take 7 magnitude slices, 14 cells per weight
    sliced = nvcim.convert(linear(300, 100), nvcim.preset("rram-sliced-1bit"), chips=1)
    slices = sliced.analog_layers()[0].n_slices
    assert hardware_cost(sliced, torch.zeros(1, 300)).layers[0].cells_per_weight == 2 * slices == 14
    # offset mapping: one reference column per column tile
    off = nvcim.convert(linear(300, 100), nvcim.override(cfg, {"mapping.scheme": "offset"}), chips=1)
    assert hardware_cost(off, torch.zeros(1, 300)).layers[0].cells == 300 * 101
    # convolutions: one input vector per output position
    conv = nvcim.convert(lenet(), cfg, chips=1)
    first = hardware_cost(conv, torch.zeros(1, 1, 28, 28)).layers[0]
    assert first.mvms == 28 * 28 and first.adc_conversions == 28 * 28 * 6


def test_cost_constants_are_overridable_and_validated():
    cfg = nvcim.override(nvcim.preset("ideal"), {"cost.adc_energy_pj": 3.12})
    base = hardware_cost(nvcim.convert(linear(), nvcim.preset("ideal"), chips=1), torch.zeros(1, 64))
    dbl = hardware_cost(nvcim.convert(linear(), cfg, chips=1), torch.zeros(1, 64))
    adc = base.layers[0].adc_conversions * nvcim.preset("ideal").cost.adc_energy_pj
    assert dbl.totals["energy_pj"] - base.totals["energy_pj"] == pytest.approx(adc)
    with pytest.raises(nvcim.ConfigError, match="cost.adc_rate_gsps"):
        nvcim.override(cfg, {"cost.adc_rate_gsps": 0.0})


# ---- impact analysis ------------------------------------------------------------------------------

def _digits_model():
    from nvcim.experiments import load_dataset, trained_model

    data = load_dataset("digits")
    net, _ = trained_model("mlp", data, None, 0, progress=False)
    return net, data


def test_impact_analysis_attributes_a_single_effect_exactly():
    net, data = _digits_model()
    cfg = nvcim.override(nvcim.preset("ideal"), {"device.faults.sa1": 0.05})
    test = (data.test[0][:200], data.test[1][:200])
    res = analyze(net, cfg, test, data.train[0][:256], chips=24, progress=False)
    rows = {(r.name, r.kind): r for r in res.rows}
    loss = res.ideal - res.full
    assert loss > 0.05
    # faults are the only lossy effect: removing them gives back the digital model (a zero-noise chip) ...
    assert rows[("stuck-at faults", "removed")].accuracy == pytest.approx(res.ideal, abs=1e-9)
    assert rows[("stuck-at faults", "removed")].loss == pytest.approx(loss, abs=1e-9)
    # ... and alone they lose what the full config loses, within the Monte-Carlo error
    alone = rows[("stuck-at faults", "alone")]
    assert abs(alone.loss - loss) <= 3 * (alone.se + res.full_se)
    assert ("on/off ratio", "alone") in rows and abs(rows[("on/off ratio", "alone")].loss) < 1e-9
    layers = [r for r in res.rows if r.kind == "layer"]
    assert len(layers) == 3 and all(r.loss > -3 * r.se - 1e-9 for r in layers)
    assert max(r.loss for r in layers) <= loss + 3 * res.full_se  # one layer alone loses no more than all


def test_analyze_command_writes_table_and_chart(tmp_path, capsys):
    assert main(["analyze", "--model", "mlp", "--chips", "8", "--limit", "100", "--quiet", "--out",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stuck-at faults" in out and "programming variation" in out and "regained" in out
    assert (tmp_path / "impact.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "analysis.json").is_file()


# ---- Ray --------------------------------------------------------------------------------------------

def test_ray_executor_matches_the_local_one(tmp_path):
    pytest.importorskip("ray", reason="install the nvcim[ray] extra")  # CI installs it through [dev]
    from nvcim.experiments.ray_executor import RayExecutor

    exp = from_dict(dict(GRID, name="ray", seeds=[0, 1], sweep={"device.programming.sigma": [0.05, 0.3]}))
    run(exp, tmp_path / "local", progress=False)
    s = run(exp, tmp_path / "ray", executor=RayExecutor(num_cpus=2), progress=False)
    assert s.computed == 8 and not s.failed
    local = {r["key"]: r for r in Store(tmp_path / "local", readonly=True).rows()}
    remote = {r["key"]: r for r in Store(tmp_path / "ray", readonly=True).rows()}
    assert local.keys() == remote.keys()
    for k, r in local.items():
        a, b = r["result"], remote[k]["result"]
        a["cost"].pop("wall_time_s")
        b["cost"].pop("wall_time_s")
        assert a == b  # identical, per-chip accuracies included
    assert {r["host"] for r in remote.values()}  # written by the driver, with host and timing
    assert remote[k]["wall_time_s"] > 0


def test_unreachable_ray_cluster_is_a_clear_error(tmp_path):
    pytest.importorskip("ray", reason="install the nvcim[ray] extra")
    exp = from_dict(dict(GRID, name="ray-bad", seeds=[0], methods=["none"], sweep={}))
    from nvcim.experiments.ray_executor import RayExecutor

    s = run(exp, tmp_path, executor=RayExecutor(address="127.0.0.1:1"), progress=False)
    assert s.failed and "Ray cluster" in s.failed[0] and s.computed == 0


def test_model_filter_keeps_other_layers_digital():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    m = nvcim.convert(net, "ideal", chips=1, filter_fn=lambda mod, name: name == "2")
    assert [lay.layer_name for lay in m.analog_layers()] == ["2"]


def test_a_store_with_a_malicious_model_name_renders_escaped(tmp_path):
    """Stores are data, possibly from someone else: every string in a row is escaped on the page."""
    run(from_dict(dict(GRID, name="plain", methods=["none"], sweep={})), tmp_path, progress=False)
    import sqlite3
    from contextlib import closing

    from nvcim.experiments.store import checksum

    with closing(sqlite3.connect(tmp_path / "results.sqlite")) as c:
        (key, res), = c.execute("SELECT key, result FROM points").fetchall()
        import json

        r = json.loads(res)
        r["model"]["name"] = "<script>alert('model')</script>"
        r["dataset"] = "<b onmouseover=alert(1)>digits</b>"
        res = json.dumps(r, sort_keys=True)
        c.execute("UPDATE points SET result = ?, checksum = ?, method = ?, code_version = ? WHERE key = ?",
                  (res, checksum(res), "none<script>", "0.1<i>", key))
        c.commit()
    page = write_report(tmp_path).read_text()
    assert "<script" not in page and "<b onmouseover" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&#x27;model&#x27;)&lt;/script&gt;" in page


def test_hardware_cost_counts_sram_weights_and_per_chip_addresses():
    model = nvcim.convert(linear(300, 100), nvcim.preset("ideal"), chips=2)
    lay = model.analog_layers()[0]
    shared = torch.zeros(100, 300, dtype=torch.bool)
    shared[0, :10] = True
    lay.crossbar.sram_mask, lay.crossbar.sram_w = shared, torch.zeros(2, 100, 300)
    assert hardware_cost(model, torch.zeros(1, 300)).layers[0].sram_bytes == 10 * 2  # 16-bit weights
    per_chip = torch.zeros(2, 100, 300, dtype=torch.bool)
    per_chip[0, 0, :10] = True
    per_chip[1, 5, 20:30] = True  # 10 entries on each chip, at different places
    lay.crossbar.sram_mask = per_chip
    # each entry also stores its position: 30 000 weights need 15 bits, 2 bytes
    assert hardware_cost(model, torch.zeros(1, 300)).layers[0].sram_bytes == 10 * (2 + 2)


def test_analyze_finds_each_effect_whatever_the_model_and_switches_it_off():
    """The effects are found through the typed configs: PCM's state-dependent drift (no nu_mean) is drift,
    and every programming model with a spread is programming variation; switching either off leaves none."""
    from nvcim.devices import has_drift
    from nvcim.experiments.analyze import EFFECTS, _switch_off

    drift, variation = EFFECTS["drift"][0], EFFECTS["programming variation"][0]
    pcm, mlc = nvcim.preset("pcm"), nvcim.preset("rram-mlc-4bit")
    assert drift(pcm) and not drift(mlc) and variation(pcm) and variation(mlc)
    assert not variation(nvcim.override(mlc, {"device.programming.sigma": 0.0}))
    off = _switch_off(pcm, ["drift", "programming variation"])
    assert off is not None and not has_drift(off.device) and not variation(off)
    assert off.device.drift.t_read == pcm.device.drift.t_read and off.device.read_noise == pcm.device.read_noise


def test_analyze_has_a_row_for_every_layer_kind_on_the_chip():
    """The built-in ViT (MultiheadAttention, Linear, a Conv2d stem): one per-layer row for every unit the
    conversion puts on the chip, each run with that unit alone on the chip."""
    from nvcim.experiments.models import vit

    torch.manual_seed(0)
    net = vit((1, 8, 8), 10).eval()
    cfg = nvcim.override(nvcim.preset("ideal"), {"device.faults.sa1": 0.05})
    x = torch.rand(40, 1, 8, 8)
    y = net(x).argmax(-1)
    converted = [n for n, _ in nvcim.convert(copy.deepcopy(net), cfg, chips=1).report.converted]
    kinds = {type(m).__name__ for n, m in net.named_modules() if n in converted}
    assert "MultiheadAttention" in kinds and len(converted) >= 3
    res = analyze(net, cfg, (x, y), x, chips=4, progress=False)
    assert sorted(r.name for r in res.rows if r.kind == "layer") == sorted(converted)
