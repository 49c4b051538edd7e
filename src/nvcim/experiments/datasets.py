"""Datasets: scikit-learn's digits (embedded), files on disk, and user factories.

Names: ``digits``; ``fashion-mnist`` and ``mnist`` (looked up under $NVCIM_DATA and /usr/share/datasets/);
a folder of IDX files, a CIFAR-10/100 python folder or a class-per-subfolder image tree, an ``.npz``/``.pt``
file of arrays (:mod:`.disk`); text for language models, ``text:PATH`` or a ``.txt`` file or folder, and
``pystdlib`` (:mod:`.text`); or ``pkg.module:factory`` returning ((x_train, y_train), (x_test, y_test))
(this runs user code).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DatasetError
from . import disk, text
from .idx import load_idx_dir

SEARCH = ("/usr/share/datasets",)


@dataclass
class Dataset:
    """A dataset: image classification (inputs (N, C, H, W) float, labels (N,) int64), or text for language
    models (tokens (N, L) int64 as inputs and targets, ``classes`` the vocabulary). ``metric`` is the task's
    default metric (:mod:`nvcim.evaluation.task_metrics`)."""

    name: str
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: int
    metric: str = "top1"

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input: (C, H, W) for images, (L,) for token windows."""
        return tuple(int(d) for d in self.train[0].shape[1:])


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 5
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", (x[tr], y[tr]), (x[te], y[te]), 10)


def find_dir(name: str) -> Path:
    """The IDX folder of a named dataset under $NVCIM_DATA or /usr/share/datasets/."""
    roots = [os.environ["NVCIM_DATA"]] if os.environ.get("NVCIM_DATA") else []
    for root in (*roots, *SEARCH):
        for cand in (name, name.replace("-", "_"), name.replace("-", "")):
            if (Path(root) / cand).is_dir():
                return Path(root) / cand
    hint = " (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
    raise DatasetError(f"dataset '{name}' not found under {', '.join([*roots, *SEARCH])}{hint}; "
                       "or pass a folder of IDX files")


def load_dataset(name: str) -> Dataset:
    """Load a dataset by name, folder or import path (see the module doc)."""
    if name == "digits":
        return digits()
    if name == "pystdlib":  # text: the Python standard library's sources
        return Dataset(name, *text.windows(text.stdlib_text()), text.VOCAB, "perplexity")
    if name.startswith("text:") or (Path(name).suffix == ".txt" and Path(name).is_file()) or (
            Path(name).is_dir() and any(Path(name).glob("*.txt"))):
        path = Path(name.removeprefix("text:"))
        if not path.exists():
            raise DatasetError(f"text {path}: no such file or folder")
        return Dataset(path.stem, *text.windows(text.read_text(path)), text.VOCAB, "perplexity")
    if name in ("fashion-mnist", "mnist"):
        train, test = load_idx_dir(find_dir(name))
        return Dataset(name, train, test, 10)
    if ":" in name and not Path(name).exists():
        from .models import load_object

        factory = load_object(name)
        try:
            (xtr, ytr), (xte, yte) = factory()  # type: ignore[operator]
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{name!r} must return ((x_train, y_train), (x_test, y_test)): {e}") from None
        if xtr.dim() != 4:
            raise DatasetError(f"{name!r}: images must be (N, C, H, W), got {tuple(xtr.shape)}")
        return Dataset(name, (xtr.float(), ytr.long()), (xte.float(), yte.long()), int(ytr.max()) + 1)
    path = Path(name)
    if path.is_file():
        return _named(path.stem, disk.load_array_file(path))
    if path.is_dir():
        if disk.is_cifar_dir(path):
            return _named(path.name, disk.load_cifar_dir(path))
        if disk.is_image_folder(path):
            return _named(path.name, disk.load_image_folder(path))
        return _named(path.name, load_idx_dir(name))
    raise DatasetError(f"unknown dataset '{name}': use digits, fashion-mnist, mnist, a folder (IDX files, a "
                       "CIFAR python folder, or class-per-subfolder images), an .npz/.pt file, or "
                       "pkg.module:factory")


def _named(name: str, split: disk.Split) -> Dataset:
    """A Dataset from loaded splits, checking that train and test images have one shape."""
    (xtr, ytr), (xte, yte) = split
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetError(f"{name}: train images are {tuple(xtr.shape[1:])} but test images "
                           f"{tuple(xte.shape[1:])}")
    if len(ytr) == 0 or len(yte) == 0:
        raise DatasetError(f"{name}: the train and the test split each need at least one example")
    return Dataset(name, (xtr, ytr), (xte, yte), int(max(int(ytr.max()), int(yte.max()))) + 1)
