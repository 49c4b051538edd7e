"""Digital training of the built-in models, with a cache of trained weights.

The cache lives in $NVCIM_CACHE or ~/.cache/nvcim/models; entries are state_dicts loaded with
``weights_only=True``, written atomically, and retrained if unreadable.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluation.task_metrics import get_metric
from .datasets import Dataset
from .models import build_model, pretrained

DEFAULT_EPOCHS = {"digits": 40}


def cache_dir() -> Path:
    """Root of nvcim's cache ($NVCIM_CACHE, else ~/.cache/nvcim)."""
    root = os.environ.get("NVCIM_CACHE") or str(Path.home() / ".cache" / "nvcim")
    return Path(root)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000, metric: str = "top1") -> float:
    """The digital model's ``metric`` (default top-1 accuracy, a fraction) on (x, y)."""
    model.eval()
    dev = next(model.parameters()).device
    score = get_metric(metric)
    total, count = 0.0, 0.0
    for i in range(0, len(y), batch):
        sums, n = score.batch(model(x[i:i + batch].to(dev)).unsqueeze(0).cpu(), y[i:i + batch].cpu())
        total, count = total + float(sums[0]), count + n
    return float(score.finish(torch.tensor([total], dtype=torch.float64), count)[0])


def train(model: nn.Module, data: Dataset, epochs: int, seed: int = 0, lr: float = 2e-3, batch: int = 128,
          progress: bool = True) -> nn.Module:
    """Plain digital training with Adam and the task's loss (cross-entropy for classification and for next
    tokens), seeded; returns the model in eval mode.

    It trains on the device the model is on; batches are moved there one at a time."""
    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    x, y = data.train
    task_loss = get_metric(data.metric).loss  # cross-entropy for classes and next tokens alike
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * ((len(y) + batch - 1) // batch)))
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc=f"train {data.name}", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            loss = task_loss(model(x[idx].to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def trained_model(name: str, data: Dataset, epochs: int | None = None, seed: int = 0,
                  progress: bool = True, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained model from the cache, or trained now (on ``device``) and cached. Returns (model, info), the
    model on ``device``. The cache key is dataset, model, epochs and seed: a model trained on a GPU is cached
    like one trained on the CPU (their weights differ in the last bits)."""
    if pretrained(name):  # a model directory brings its weights: used as they are, never trained or cached
        return build_model(name, data.in_shape, data.classes).to(device).eval(), {
            "model": name, "dataset": data.name, "epochs": 0, "seed": seed, "cache": name, "cached": True}
    epochs = epochs if epochs is not None else DEFAULT_EPOCHS.get(data.name, 5)
    torch.manual_seed(seed)  # the initial weights too, not only training, depend on the seed alone
    model = build_model(name, data.in_shape, data.classes)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{data.name}-{name}-e{epochs}-s{seed}")
    path = cache_dir() / "models" / f"{tag}.pt"
    info: dict[str, Any] = {"model": name, "dataset": data.name, "epochs": epochs, "seed": seed,
                            "cache": str(path), "cached": False}
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            info["cached"] = True
            return model.to(device).eval(), info
        except Exception as e:  # unreadable or stale: retrain rather than fail
            warnings.warn(f"ignoring unreadable cached model {path}: {e}", stacklevel=2)
    train(model.to(device), data, epochs, seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return model.eval(), info
