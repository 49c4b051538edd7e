"""Image datasets from disk in the common layouts, each with a clear error for a bad file:

- CIFAR-10 / CIFAR-100 "python version" folders (``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, or
  ``train`` and ``test``), read with a restricted unpickler that builds only dicts, lists, bytes and numpy
  arrays (a pickle can run code; these files cannot);
- an ImageFolder tree of PNG/JPEG files, one subfolder per class, either ``train/`` and ``test/`` below the
  root or the class folders directly (then a fixed 80/20 split);
- one ``.npz`` or ``.pt`` file holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` or just ``x`` and ``y``
  (then the fixed 80/20 split); ``.pt`` files are read with ``weights_only=True``, ``.npz`` without pickles.

Images become float32 (N, C, H, W) in [0, 1] (8-bit data divided by 255), labels int64.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetError

Split = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def split_80_20(x: Tensor, y: Tensor, seed: int = 0) -> Split:
    """A fixed random 80/20 train/test split."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, len(y) // 5)
    te, tr = perm[:n_test], perm[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


def _images(a: Any, where: str) -> Tensor:
    """An array of images as float32 (N, C, H, W): uint8 divided by 255, (N, H, W) gets C = 1."""
    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, Tensor) else a
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4:
        raise DatasetError(f"{where}: images must be (N, C, H, W) or (N, H, W), got shape {tuple(t.shape)}")
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _labels(a: Any, n: int, where: str) -> Tensor:
    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, Tensor) else a
    if t.dim() != 1 or len(t) != n:
        raise DatasetError(f"{where}: labels must be a vector of {n} class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise DatasetError(f"{where}: labels must be integer class indices")
    t = t.long()
    if n and int(t.min()) < 0:
        raise DatasetError(f"{where}: labels must be >= 0, found {int(t.min())}")
    return t


# ---- CIFAR ---------------------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays (and the containers pickle builds itself): a CIFAR batch needs no more."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"refusing to load {module}.{name} from a pickle: a CIFAR batch holds only arrays")
        return super().find_class(module, name)


def _cifar_batch(p: Path) -> tuple[Tensor, Tensor]:
    try:
        d = _ArrayUnpickler(io.BytesIO(p.read_bytes()), encoding="bytes").load()
    except DatasetError as e:
        raise DatasetError(f"{p}: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle at all
        raise DatasetError(f"{p}: not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{p}: not a CIFAR python batch (a {type(d).__name__}, expected a dict)")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    labels = next((d[k] for k in ("labels", "fine_labels") if k in d), None)
    if "data" not in d or labels is None:
        raise DatasetError(f"{p}: a CIFAR batch needs 'data' and 'labels' (or 'fine_labels'), found {sorted(d)}")
    data = np.asarray(d["data"])
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{p}: 'data' must be (N, 3072) bytes of 32x32 RGB images, got {data.shape}")
    x = _images(data.reshape(-1, 3, 32, 32), str(p))
    return x, _labels(labels, len(x), str(p))


def is_cifar_dir(root: Path) -> bool:
    return (root / "test_batch").is_file() or ((root / "train").is_file() and (root / "test").is_file())


def load_cifar_dir(root: Path) -> Split:
    """A CIFAR-10 (data_batch_*, test_batch) or CIFAR-100 (train, test) python folder."""
    if (root / "test_batch").is_file():
        parts = sorted(root.glob("data_batch_*"))
        if not parts:
            raise DatasetError(f"{root}: has test_batch but no data_batch_* files")
        xs, ys = zip(*(_cifar_batch(p) for p in parts))
        train = (torch.cat(xs), torch.cat(ys))
        test = _cifar_batch(root / "test_batch")
    else:
        train, test = _cifar_batch(root / "train"), _cifar_batch(root / "test")
    return train, test


# ---- image folders -------------------------------------------------------------------------------
def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def is_image_folder(root: Path) -> bool:
    dirs = _class_dirs(root) if root.is_dir() else []
    if {d.name for d in dirs} >= {"train", "test"}:
        dirs = _class_dirs(root / "train")
    return bool(dirs) and any(f.suffix.lower() in IMAGE_SUFFIXES for d in dirs for f in d.iterdir())


def _read_classes(root: Path, classes: list[str]) -> tuple[Tensor, Tensor]:
    from PIL import Image, UnidentifiedImageError

    xs, ys, shape = [], [], None
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for f in files:
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DatasetError(f"{f}: not a readable image ({e})") from None
            a = a[:, :, None] if a.ndim == 2 else a
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise DatasetError(f"{f}: size {a.shape[1]}x{a.shape[0]} with {a.shape[2]} channels differs from "
                                   f"the first image's {shape[1]}x{shape[0]} with {shape[2]}: resize the images "
                                   "to one size first")
            xs.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DatasetError(f"{root}: no PNG/JPEG images in its class folders")
    return torch.stack(xs).float() / 255.0, torch.tensor(ys, dtype=torch.long)


def load_image_folder(root: Path) -> Split:
    """Class-per-subfolder images: ``root/train/<class>/`` and ``root/test/<class>/`` (the same classes), or
    ``root/<class>/`` split 80/20. Classes are the subfolder names in sorted order."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = [d.name for d in _class_dirs(root / "train")]
        extra = sorted({d.name for d in _class_dirs(root / "test")} - set(classes))
        if extra:
            raise DatasetError(f"{root / 'test'}: class folders {extra} are not in {root / 'train'}")
        return _read_classes(root / "train", classes), _read_classes(root / "test", classes)
    classes = [d.name for d in _class_dirs(root)]
    return split_80_20(*_read_classes(root, classes))


# ---- array files ---------------------------------------------------------------------------------
def load_array_file(p: Path) -> Split:
    """``x_train``/``y_train``/``x_test``/``y_test``, or ``x``/``y`` (split 80/20), from .npz or .pt."""
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d: dict[str, Any] = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"{p}: not a readable .npz of arrays ({e})") from None
    elif p.suffix == ".pt":
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unreadable, or refused by weights_only
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetError(f"{p}: not a readable .pt dict of tensors ({first}; loaded with "
                               "weights_only=True)") from None
        if not isinstance(d, dict):
            raise DatasetError(f"{p}: expected a dict of tensors, got a {type(d).__name__}")
    else:
        raise DatasetError(f"{p}: a data file must end in .npz or .pt")
    if {"x_train", "y_train", "x_test", "y_test"} <= set(d):
        out = []
        for part in ("train", "test"):
            x = _images(d[f"x_{part}"], f"{p}: x_{part}")
            out.append((x, _labels(d[f"y_{part}"], len(x), f"{p}: y_{part}")))
        return out[0], out[1]
    if {"x", "y"} <= set(d):
        x = _images(d["x"], f"{p}: x")
        return split_80_20(x, _labels(d["y"], len(x), f"{p}: y"))
    raise DatasetError(f"{p}: needs arrays x_train, y_train, x_test, y_test (or x, y), found {sorted(d)}")
