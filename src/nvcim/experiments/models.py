"""Built-in classifiers for 28x28 (MNIST-like), 32x32 and 8x8 (digits) images.

``mlp``, ``lenet5``, ``vgg`` and ``resnet`` (ResNet-8 style) are small; ``resnet18`` (torchvision's
ResNet-18 layout), ``mobilenetv2`` (inverted residuals with depthwise convolutions) and ``vit`` (patches
through Linear, ``nn.TransformerEncoderLayer`` attention) are the real architectures the field uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
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



class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (basic blocks [2, 2, 2, 2], widths w, 2w, 4w, 8w). ``stem``: "small"
    (one 3x3 convolution, stride 1: the usual choice for 32x32 inputs) or "imagenet" (7x7 stride 2 and max
    pooling, as torchvision's, which leaves a 1x1 feature map at the last stage of a 32x32 input)."""

    def __init__(self, in_shape: tuple[int, int, int], classes: int, width: int = 64, stem: str = "small") -> None:
        super().__init__()
        c = in_shape[0]
        if stem == "imagenet":
            self.stem: nn.Module = nn.Sequential(nn.Conv2d(c, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                                 nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet18(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """ResNet-18 (11 M weights) with the small stem."""
    return ResNet18(in_shape, classes)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise convolution, 1x1 linear projection, and a residual
    connection when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6()]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
                   nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenetv2(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """A MobileNetV2 (Sandler 2018) sized for 28x28 / 32x32 inputs: (expansion, channels, blocks, stride) =
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), then a 1x1 convolution to 256 channels."""
    c = in_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(c, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for t, cout, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2)):
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    layers += [nn.Conv2d(cin, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(256, classes)]
    return nn.Sequential(*layers)


class ViT(nn.Module):
    """A small vision transformer: non-overlapping ``patch`` x ``patch`` patches through a Linear embedding, a
    class token, learned position embeddings, ``depth`` ``nn.TransformerEncoderLayer`` blocks (pre-norm,
    GELU) and a Linear head on the class token."""

    def __init__(self, in_shape: tuple[int, int, int], classes: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, patch: int = 7) -> None:
        super().__init__()
        c, h, w = in_shape
        if h % patch or w % patch:
            patch = next(p for p in range(min(h, w) // 2, 0, -1) if h % p == 0 and w % p == 0)
        self.patch = patch
        n = (h // patch) * (w // patch)
        self.embed = nn.Linear(c * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0,
                                                                 activation="gelu", batch_first=True,
                                                                 norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        p = nn.functional.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, patches, C p p)
        z = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(p)], dim=1) + self.pos
        return self.head(self.norm(self.blocks(z))[:, 0])


def vit(in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """ViT with 64-dimensional tokens, two blocks of four heads, 7x7 patches (16 of a 28x28 image)."""
    return ViT(in_shape, classes)


class GPT(nn.Module):
    """A small causal (GPT-style) language model over byte tokens: token and learned position tables,
    pre-norm transformer blocks with a causal mask, a LayerNorm and a Linear head over the vocabulary.
    Input (B, L) token ids, L <= context; output (B, L, vocab) next-token logits."""

    def __init__(self, context: int, vocab: int = 256, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, context, dim))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                                               batch_first=True, norm_first=True)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        n = ids.shape[1]
        if n > self.pos.shape[1]:
            raise NvcimError(f"GPT: sequences of {n} tokens exceed its context of {self.pos.shape[1]}")
        mask = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), diagonal=1)
        z = self.tok(ids) + self.pos[:, :n]
        for block in self.blocks:
            z = block(z, src_mask=mask, is_causal=True)
        return self.head(self.norm(z))


def gpt(in_shape: tuple[int, ...], classes: int) -> nn.Module:
    """Byte-level GPT: context = the sequence length of the data (in_shape[-1]), vocabulary = ``classes``."""
    return GPT(int(in_shape[-1]), classes)


MODELS: dict[str, Callable[..., nn.Module]] = {  # (in_shape, classes) -> model
    "mlp": mlp, "lenet5": lenet5, "vgg": vgg, "resnet": resnet, "resnet18": resnet18, "mobilenetv2": mobilenetv2,
    "vit": vit, "gpt": gpt}


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


class MainOutput(nn.Module):
    """A Hugging Face model returning its main output tensor (``logits``, else ``last_hidden_state``): chip
    passes and metrics take one tensor."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: Tensor) -> Tensor:
        out = self.hf(input_ids=ids)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def pretrained(name: str) -> bool:
    """Whether ``name`` brings its own weights (a Hugging Face model directory): nothing to train."""
    return name.startswith("hf:")


def _library_model(name: str, in_shape: tuple[int, ...], classes: int) -> nn.Module:
    """``hf:DIR`` (a local Hugging Face model directory, config plus weights), ``timm:NAME`` and
    ``torchvision:NAME`` (architectures built without downloading weights, ``classes`` outputs)."""
    lib, _, arch = name.partition(":")
    if lib == "hf":
        try:
            import transformers
        except ImportError:
            raise NvcimError("hf: models need transformers: pip install 'nvcim[hf]'") from None
        path = Path(arch)
        if not (path / "config.json").is_file():
            raise NvcimError(f"{name!r}: {path} is not a Hugging Face model directory (no config.json)")
        auto = transformers.AutoModelForCausalLM
        try:
            hf = auto.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except ValueError:  # not a causal LM: the base model (encoder outputs)
            hf = transformers.AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except OSError as e:
            raise NvcimError(f"{name!r}: cannot load the model directory: {e}") from None
        return MainOutput(hf.eval())
    try:
        module = importlib.import_module(lib)
    except Exception as e:  # noqa: BLE001 - missing, or installed but broken beside this torch build
        raise NvcimError(f"{name!r}: {lib} is not importable here ({type(e).__name__}: {e}); pip install {lib} "
                         "beside a matching torch") from None
    try:
        if lib == "timm":
            return module.create_model(arch, pretrained=False, num_classes=classes, in_chans=in_shape[0])
        return getattr(module.models, arch)(weights=None, num_classes=classes)
    except (AttributeError, RuntimeError, TypeError, ValueError) as e:
        raise NvcimError(f"{name!r}: {lib} cannot build {arch!r}: {e}") from None


def build_model(name: str, in_shape: tuple[int, ...], classes: int) -> nn.Module:
    """A built-in model by name; ``hf:DIR``, ``timm:NAME`` or ``torchvision:NAME``; or a user factory
    ``pkg.module:factory(in_shape, classes)``. A factory, and a model directory's code if it has any, run
    code: use only what you trust (directories with custom code are refused: trust_remote_code=False)."""
    if name in MODELS:
        return MODELS[name](in_shape, classes)
    if name.split(":", 1)[0] in ("hf", "timm", "torchvision"):
        return _library_model(name, in_shape, classes)
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
