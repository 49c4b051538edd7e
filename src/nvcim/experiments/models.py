"""Built-in classifiers for 28x28 (MNIST-like) and 8x8 (digits) single-channel images."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import Tensor, nn

from ..errors import NvcimError


def mlp(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """Two hidden layers of 256 and 128 ReLU units."""
    n = in_shape[0] * in_shape[1] * in_shape[2]
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, classes))


def lenet5(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """LeNet-5 (LeCun 1998) with ReLU and max pooling; 3x3 kernels on 8x8 inputs."""
    c, h, _ = in_shape
    if h >= 28:
        feats = nn.Sequential(nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        flat = 16 * (((h // 2) - 4) // 2) ** 2
    else:
        feats = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        flat = 16 * (h // 4) ** 2
    return nn.Sequential(feats, nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, classes))


def vgg(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """A small VGG: two blocks of two 3x3 conv + BatchNorm + ReLU, max pooling, and a classifier."""
    c, h, _ = in_shape
    layers: list[nn.Module] = []
    for cin, cout in ((c, 32), (32, 32), (32, 64), (64, 64)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        if cout == cin:  # after each block of two convolutions
            layers.append(nn.MaxPool2d(2))
    side = h // 4
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(),
                         nn.Linear(128, classes))


class BasicBlock(nn.Module):
    """ResNet basic block with an identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(y)) + self.short(x)).relu()


def resnet(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """A small ResNet (ResNet-8 style): a stem and three stages of one basic block (16, 32, 64 channels)."""
    c = in_shape[0]
    return nn.Sequential(nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "mlp": mlp, "lenet5": lenet5, "vgg": vgg, "resnet": resnet}


def load_object(path: str) -> object:
    """Import ``pkg.module:attr``. This runs the module's code: only use import paths you trust."""
    if ":" not in path:
        raise NvcimError(f"import path {path!r} must look like 'package.module:factory'")
    mod, _, attr = path.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise NvcimError(f"cannot import {path!r}: {e}") from None
    return obj


def build_model(name: str, in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """A built-in model by name, or a user factory ``pkg.module:factory(in_shape, classes)`` (runs user code)."""
    if name in MODELS:
        return MODELS[name](in_shape, classes)
    if ":" in name:
        factory = load_object(name)
        if not callable(factory):
            raise NvcimError(f"{name!r} is not callable")
        model = factory(in_shape, classes)
        if not isinstance(model, nn.Module):
            raise NvcimError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    import difflib

    near = difflib.get_close_matches(name, list(MODELS), n=1)
    raise NvcimError(f"unknown model '{name}'." + (f" Did you mean '{near[0]}'?" if near else "")
                     + f" Built-in models: {', '.join(MODELS)}, or an import path pkg.module:factory")
