"""Models from elsewhere: a local Hugging Face model directory (used as it is, never trained), timm and
torchvision architectures by name (built without downloading weights), and --weights for any model."""

import importlib
import importlib.util
import json
import os

import pytest
import torch

import nvcim
from nvcim.cli import main
from nvcim.errors import NvcimError
from nvcim.experiments.models import MainOutput, build_model

if os.environ.get("NVCIM_REQUIRE_TRANSFORMERS") != "1":
    pytest.importorskip("transformers", reason="pip install 'nvcim[hf]'")
import transformers  # noqa: E402


def _hf_dir(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    return hf, tmp_path / "tiny-gpt2"


def test_a_hugging_face_model_directory_loads_as_saved_and_goes_wholly_on_the_chip(tmp_path):
    hf, path = _hf_dir(tmp_path)
    net = build_model(f"hf:{path}", (64,), 256).eval()
    assert isinstance(net, MainOutput)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        torch.testing.assert_close(net(ids), ref)
    m = nvcim.convert(net, "ideal", chips=2, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(m(ids)[1], ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(NvcimError, match="not a Hugging Face model directory"):
        build_model(f"hf:{tmp_path}", (64,), 256)


def test_evaluate_uses_a_model_directory_as_it_is_and_weights_load_into_any_model(tmp_path, monkeypatch):
    _, path = _hf_dir(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("a b c d e f g " * 80)
    cache = tmp_path / "cache"
    monkeypatch.setenv("NVCIM_CACHE", str(cache))
    out = tmp_path / "out"
    assert main(["evaluate", "--model", f"hf:{path}", "--dataset", str(text), "--chips", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert not (cache / "models").exists()  # nothing trained, nothing cached
    res = json.loads((out / "result.json").read_text())
    assert res["metric"]["name"] == "perplexity" and res["analog_share"] == 1.0
    # --weights: a state_dict saved from the built-in GPT loads into it (weights_only=True)
    gpt = build_model("gpt", (64,), 256)
    torch.save(gpt.state_dict(), tmp_path / "w.pt")
    assert main(["evaluate", "--model", "gpt", "--weights", str(tmp_path / "w.pt"), "--dataset", str(text),
                 "--chips", "2", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "result.json").read_text())["model"]["weights"] == str(tmp_path / "w.pt")


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_timm_and_torchvision_names_build_without_download_or_say_why_not(name):
    lib = name.split(":")[0]
    usable = importlib.util.find_spec(lib) is not None
    if usable:
        try:
            importlib.import_module(lib)
        except Exception:  # noqa: BLE001 - installed but broken beside this torch (torchvision's CPU mismatch)
            usable = False
    if not usable:
        with pytest.raises(NvcimError, match=rf"{lib} is not importable here"):
            build_model(name, (3, 32, 32), 10)
        return
    net = build_model(name, (3, 32, 32), 10).eval()
    m = nvcim.convert(net, "ideal", chips=1, strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], m.digital(x), rtol=1e-4, atol=1e-4)
