"""Metrics by task: each equals its definition computed by hand, does not depend on the batch size, and a
lower-is-better metric takes its worst case from the right tail; text datasets and a language model end to
end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
from nvcim.cli import main
from nvcim.errors import DatasetError, NvcimError
from nvcim.evaluation import AccuracyStats, from_callable, get_metric
from nvcim.experiments import load_dataset
from nvcim.experiments.models import GPT
from nvcim.experiments.text import windows
from nvcim.methods import TaskData, recover


def test_top_k_counts_labels_among_the_k_largest_outputs():
    out = torch.tensor([[[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]]])  # one chip, two items
    y = torch.tensor([2, 1])
    assert get_metric("top1").batch(out, y)[0].tolist() == [0.0]
    assert get_metric("top2").batch(out, y)[0].tolist() == [1.0]  # 2 is second in item 0, 1 is third in item 1
    assert get_metric("top3").batch(out, y)[0].tolist() == [2.0]
    with pytest.raises(NvcimError, match=r"metric = 'top0' is invalid: allowed top1, top5"):
        get_metric("top0")
    with pytest.raises(nvcim.ShapeError, match="top1 needs classifier outputs .* choose the task's metric"):
        get_metric("top1").batch(torch.zeros(1, 2, 5, 3), torch.zeros(2, 5, dtype=torch.long))


def test_the_worst_case_of_a_lower_is_better_metric_is_its_right_tail():
    v = [float(i) for i in range(1, 101)]
    up, down = AccuracyStats(v, 5.0), AccuracyStats(v, 5.0, higher_is_better=False)
    assert up.kpp == 5.0 and down.kpp == 96.0  # the 5 % worst chips: lowest accuracy, highest perplexity
    assert down.kpp_ci95[0] <= down.kpp <= down.kpp_ci95[1] and down.kpp_ci95[0] > down.mean
    assert down.to_dict()["higher_is_better"] is False


def _lm(context=16, seed=0):
    torch.manual_seed(seed)
    return GPT(context, vocab=256, dim=32, depth=1, heads=2).eval()


def test_perplexity_of_ideal_chips_is_the_models_own_and_does_not_depend_on_the_batch():
    net = _lm()
    ids = torch.randint(0, 256, (7, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = net(ids)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1)).double()
    m = nvcim.convert(net, "ideal", chips=2)
    res = nvcim.evaluate(m, (ids, ids), batch_size=3, metric="perplexity", progress=False)
    assert res.ideal_accuracy == pytest.approx(math.exp(float(ce)), rel=1e-5)
    assert res.accuracy.per_chip == pytest.approx([math.exp(float(ce))] * 2, rel=1e-4)
    assert res.metric == {"name": "perplexity", "higher_is_better": False, "unit": ""}
    ce_res = nvcim.evaluate(m, (ids, ids), batch_size=7, metric="token-ce", progress=False)
    assert ce_res.ideal_accuracy == pytest.approx(float(ce), rel=1e-5)
    noisy = nvcim.convert(_lm(), nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.02}),
                          chips=3)
    a = nvcim.evaluate(noisy, (ids, ids), batch_size=2, metric="perplexity", progress=False)
    b = nvcim.evaluate(noisy, (ids, ids), batch_size=7, metric="perplexity", progress=False)
    assert a.accuracy.per_chip == pytest.approx(b.accuracy.per_chip, rel=1e-6)
    assert len(set(a.accuracy.per_chip)) == 3 and a.ideal_accuracy not in a.accuracy.per_chip  # chips differ
    hit = nvcim.evaluate(m, (ids, ids), metric="token-accuracy", progress=False)
    assert hit.ideal_accuracy == pytest.approx(float((logits[:, :-1].argmax(-1) == ids[:, 1:]).double().mean()))


def test_regression_metrics_and_a_user_metric_equal_their_definitions():
    lin = nn.Sequential(nn.Linear(4, 4, bias=False)).eval()
    with torch.no_grad():
        lin[0].weight.copy_(0.5 * torch.eye(4))
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    m = nvcim.convert(lin, "ideal", chips=2)
    mse = nvcim.evaluate(m, (x, x), metric="mse", progress=False)
    assert mse.ideal_accuracy == pytest.approx(float(((0.5 * x - x) ** 2).mean()), rel=1e-5)
    psnr = nvcim.evaluate(m, (x, x), metric="psnr", progress=False)
    want = float((-10 * torch.log10(((0.5 * x - x) ** 2).mean(1))).mean())
    assert psnr.ideal_accuracy == pytest.approx(want, rel=1e-5) and psnr.metric["higher_is_better"]
    mae = from_callable(lambda o, t: (o - t).abs().mean(-1), "mae", higher_is_better=False)
    res = nvcim.evaluate(m, (x, x), metric=mae, progress=False)
    assert res.ideal_accuracy == pytest.approx(float((0.5 * x - x).abs().mean()), rel=1e-5)
    assert res.metric["name"] == "mae" and not res.accuracy.higher_is_better


def test_text_windows_hold_out_the_end_and_bad_text_is_named(tmp_path):
    (train, _), (test, test_y) = windows(bytes(range(200)), context=10)
    assert train.shape == (18, 10) and test.shape == (2, 10) and torch.equal(test, test_y)
    assert test[-1].tolist() == list(range(190, 200))  # the end of the text is the test split
    (tmp_path / "a.txt").write_bytes(b"x" * 30)
    with pytest.raises(DatasetError, match=r"the text has 30 bytes: at least 128 are needed"):
        load_dataset(str(tmp_path / "a.txt"))
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("text:" + str(tmp_path / "missing.txt"))
    (tmp_path / "b.txt").write_text("héllo wörld " * 40, encoding="utf-8")
    d = load_dataset(str(tmp_path))  # a folder of .txt files: every byte a token
    assert d.metric == "perplexity" and d.classes == 256 and d.in_shape == (64,)


def test_a_language_model_runs_end_to_end_from_the_command_line_and_recover_says_what_it_cannot(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "out"
    assert main(["evaluate", "--model", "gpt", "--dataset", str(text), "--epochs", "1", "--chips", "4",
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["metric"] == {"name": "perplexity", "higher_is_better": False, "unit": ""}
    acc = res["accuracy"]
    assert acc["kpp"] >= acc["mean"] and acc["kpp"] == max(acc["per_chip"])  # worst = highest perplexity
    assert res["analog_share"] == 1.0
    assert main(["evaluate", "--model", "gpt", "--dataset", str(text), "--metric", "nope", "--quiet",
                 "--out", str(out)]) == 2
    m = nvcim.convert(_lm(64), "rram-mlc-4bit", chips=2)
    ids = load_dataset(str(text)).train[0]
    with pytest.raises(NvcimError, match="auto ranks chains by check accuracy.*metric 'perplexity'"):
        recover(m, ["auto"], TaskData((ids, ids), ids), (ids, ids), metric="perplexity", progress=False)


@pytest.mark.parametrize("chain", ["vat", "qvat", "kd", "rsa", "self-tune+chip-kd"])
def test_recovery_methods_train_and_guard_a_language_model_on_its_perplexity(tmp_path, chain):
    """The training-based methods (vat, qvat, kd), rsa, self-tune and chip-kd with the task's loss (next-token
    cross-entropy), under the guard scoring perplexity: each lowers the mean chip perplexity of a small trained GPT."""
    from nvcim.experiments import trained_model

    words = "the cat dog sat ran on under a mat log big small red".split()
    gen = torch.Generator().manual_seed(0)  # a seeded stream of words: the test windows are new sentences
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(words[int(i)] for i in torch.randint(0, len(words), (1500,), generator=gen)))
    data = load_dataset(str(text))
    net, _ = trained_model("gpt", data, epochs=30, progress=False)
    cfg = nvcim.override(nvcim.preset("rram-mlc-4bit"), {"device.read_noise": 0.02})  # faults and variation
    m = nvcim.convert(net, cfg, chips=4, seed=1)
    opts = {"vat": {"epochs": 4}, "qvat": {"epochs": 4}, "kd": {"epochs": 4}, "rsa": {"epochs": 4},
            "chip-kd": {"steps": 20}}
    methods = [nvcim.methods.get(p, **opts.get(p, {})) for p in chain.split("+")]
    train = data.train
    rep = recover(m, methods, TaskData(train, train[0], metric="perplexity"), data.test, progress=False)
    assert rep.after.metric["name"] == "perplexity" and rep.before.metric["name"] == "perplexity"
    assert rep.after.accuracy.mean < rep.before.accuracy.mean, rep.summary()
    assert 0 < rep.recovery_ratio <= 1.5, rep.summary()


def test_a_language_model_sweep_runs_stores_and_reports_its_metric(tmp_path):
    from nvcim.experiments.report import write_report
    from nvcim.experiments.runner import run
    from nvcim.experiments.spec import from_dict
    from nvcim.experiments.store import Store

    text = tmp_path / "corpus.txt"
    text.write_text("all work and no play makes jack a dull boy. " * 60)
    exp = from_dict({"name": "lm", "model": "gpt", "dataset": str(text), "epochs": 40, "chip": "rram-mlc-4bit",
                     "chips": 3, "methods": ["none"], "set": {"device.faults.sa0": 0.0, "device.faults.sa1": 0.0},
                     "sweep": {"device.programming.sigma": [0.02, 0.5]}})
    summary = run(exp, tmp_path / "run", progress=False)
    assert summary.computed == 2 and not summary.failed
    rows = Store(tmp_path / "run" / "results.sqlite").rows()
    assert {r["result"]["metric"]["name"] for r in rows} == {"perplexity"}
    by_sigma = {r["params"]["device.programming.sigma"]: r["result"]["accuracy"]["mean"] for r in rows}
    assert by_sigma[0.5] > by_sigma[0.02]  # more variation, higher perplexity
    page = write_report(tmp_path / "run").read_text()
    assert "perplexity" in page
    with pytest.raises(nvcim.ConfigError, match="metric"):
        from_dict({"name": "x", "metric": "f1"})


def test_nvcim_recover_runs_end_to_end_on_a_language_model(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be that is the question " * 60)
    out = tmp_path / "rec"
    assert main(["recover", "--model", "gpt", "--dataset", str(text), "--epochs", "3", "--chips", "3",
                 "--method", "self-tune", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["metric"]["name"] == "perplexity" and res["degraded_accuracy"]["higher_is_better"] is False
    assert math.isfinite(res["accuracy"]["mean"]) and (out / "recovery.png").is_file()
