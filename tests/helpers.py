"""Small models shared by the tests."""

import torch
from torch import nn


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10)).eval()


def copy_of(model: nn.Module, seed: int = 0) -> nn.Module:
    m = lenet(seed)
    m.load_state_dict(model.state_dict())
    return m


def linear(k: int = 64, o: int = 8, seed: int = 0, bias: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, o, bias=bias)).eval()
