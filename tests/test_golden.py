"""The frozen golden outputs (tests/golden_cases.py) hold to the bit."""

import pytest
import torch
from golden_cases import PATH, cases, output


@pytest.mark.parametrize("model,name", cases())
def test_chip_outputs_match_the_frozen_goldens(model, name):
    golden = torch.load(PATH, weights_only=True)[f"{model}/{name}"]
    got = output(model, name)
    assert got.shape == golden.shape
    assert torch.equal(got, golden), (f"{model}/{name}: {(got != golden).sum()} of {got.numel()} outputs changed, "
                                      f"max {(got - golden).abs().max():.3g}; see tests/golden_cases.py")
