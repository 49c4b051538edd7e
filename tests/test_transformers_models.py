"""Hugging Face models built from small configs (random weights, no download): every matrix weight on the
chip, the ideal chip reproduces the model, noisy chips differ from it and from each other.

``transformers`` is in the dev extra, so CI runs these (NVCIM_REQUIRE_TRANSFORMERS=1 turns a missing package into
a failure there). timm needs torchvision, which has no build for the pinned CPU torch: its tests skip with
that reason where timm is absent."""

import logging
import os

import pytest
import torch
from torch import nn

import nvcim
from nvcim.config import override, preset

if os.environ.get("NVCIM_REQUIRE_TRANSFORMERS") != "1":
    pytest.importorskip("transformers", reason="pip install transformers (in nvcim's dev extra)")
import transformers  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)  # the tiny vocabularies' token-id notices

NOISY = override(preset("rram-mlc-4bit"), {"device.read_noise": 0.02, "circuit.dac_bits": 8, "circuit.adc_bits": 8})
V, L = 61, 12  # vocabulary, tokens per sequence


class Logits(nn.Module):
    """A Hugging Face model's main output tensor (logits, or the last hidden state) as a plain tensor."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids):
        out = self.hf(input_ids=ids)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert():
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    return transformers.BertModel(cfg, add_pooling_layer=True)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


BUILD = {"gpt2": _gpt2, "bert": _bert, "llama": _llama}


def _matrix_weights(hf: nn.Module) -> int:
    """Every 2-D weight that is not a lookup table: counted here independently of nvcim's report."""
    tables = {id(m.weight) for m in hf.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in hf.parameters() if p.dim() >= 2 and id(p) not in tables)


def _model_and_reference(arch: str):
    """The model (seeded), three token sequences and its own output on them."""
    torch.manual_seed(0)
    hf = BUILD[arch]().eval()
    ids = torch.randint(1, V, (3, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return hf, ids, Logits(hf)(ids)


@pytest.mark.parametrize("arch", sorted(BUILD))
def test_every_matrix_weight_of_a_hugging_face_model_is_on_the_chip(arch):
    hf, ids, ref = _model_and_reference(arch)
    expected = _matrix_weights(hf)
    m = nvcim.convert(Logits(hf), "ideal", chips=2, strict=True)
    rep = m.report
    assert rep.digital == [] and rep.analog_share == 1.0, rep.summary()
    # tied weights (GPT-2's and Llama's heads share the token table) count once, on the chip
    tied = getattr(hf.config, "tie_word_embeddings", False) and hasattr(hf, "lm_head")
    assert rep.analog_weights == expected + (hf.lm_head.weight.numel() if tied else 0)
    if arch == "gpt2":
        assert sum(k == "Conv1D" for _, k in rep.converted) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per block
    with torch.no_grad():
        y = m(ids)
    assert y.shape == (2, *ref.shape)
    torch.testing.assert_close(y[0], ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y[1], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(BUILD))
def test_noisy_chips_of_a_hugging_face_model_differ_and_reproduce(arch):
    hf, ids, ref = _model_and_reference(arch)
    m = nvcim.convert(Logits(hf), NOISY, chips=3, seed=4)
    m.calibrate(ids)
    with torch.no_grad():
        y, again = m(ids, read_key=2), m(ids, read_key=2)
        one = torch.cat([m(ids[i:i + 1], image_ids=torch.tensor([i]), read_key=2) for i in range(3)], dim=1)
    assert torch.equal(y, again) and torch.isfinite(y).all()
    torch.testing.assert_close(one, y, rtol=1e-5, atol=1e-5)  # the batch does not change a sequence's result
    scale = ref.abs().mean()
    assert (y[0] - ref).abs().mean() > 1e-3 * scale and (y[0] - y[1]).abs().mean() > 1e-3 * scale
    # without stuck cells the error shrinks with the programming sigma: noisy chips, not broken ones
    errs = []
    for sigma in (0.1, 0.01):
        mild = override(NOISY, {"device.faults.sa0": 0.0, "device.faults.sa1": 0.0, "device.read_noise": 0.0,
                                "device.programming.sigma": sigma, "device.bits_per_cell": 0})
        c = nvcim.convert(Logits(BUILD[arch]().eval()), mild, chips=3, seed=4)
        c.net.load_state_dict(m.net.state_dict())  # the same weights, converted
        c.reprogram(ids)
        with torch.no_grad():
            errs.append(float((c(ids, read_key=2) - ref).abs().mean() / scale))
    assert errs[1] < errs[0] / 3 and errs[0] < 0.5, errs


def test_timm_models_where_timm_installs():
    timm = pytest.importorskip("timm", reason="timm needs torchvision, which has no build for the pinned CPU "
                                              "torch 2.13.0 (its import fails); install both where they match")
    for name, kw in (("resnet18", {}), ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8})):
        torch.manual_seed(0)
        net = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            ref = net(x)
        m = nvcim.convert(net, "ideal", chips=2, strict=True)
        assert m.report.analog_share == 1.0, m.report.summary()
        with torch.no_grad():
            torch.testing.assert_close(m(x)[1], ref, rtol=1e-4, atol=1e-4)
