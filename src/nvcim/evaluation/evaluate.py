"""``evaluate``: accuracy of every chip of an AnalogModel on a labelled dataset, in batched passes."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import __version__
from ..chip import rng
from ..chip.model import AnalogModel
from ..errors import NvcimError, ShapeError
from .metrics import AccuracyStats

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. ``to_dict()`` has the keys of the command line's result.json."""

    ideal_accuracy: float
    accuracy: AccuracyStats
    chips: int
    images: int
    seed: int
    wall_time_s: float
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chip_images_per_s(self) -> float:
        return self.chips * self.images / max(self.wall_time_s, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"nvcim_version": __version__, "ideal_accuracy": self.ideal_accuracy,
                "accuracy": self.accuracy.to_dict(), "chips": self.chips, "images": self.images,
                "seed": self.seed, "wall_time_s": self.wall_time_s,
                "chip_images_per_s": self.chip_images_per_s, "config": self.config, **self.extra}

    def summary(self) -> str:
        a = self.accuracy
        return (f"ideal {100 * self.ideal_accuracy:.2f} %  |  chips ({self.chips}): "
                f"{100 * a.mean:.2f} ± {100 * a.std:.2f} %, worst {a.kpp_k:g} % {100 * a.kpp:.2f} %, "
                f"min {100 * a.min:.2f} %  |  {self.wall_time_s:.1f} s")


def _batches(data: Data, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ShapeError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    for item in data:  # a DataLoader or any iterable of (inputs, labels)
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise ShapeError("data must yield (inputs, labels) pairs")
        yield item[0], item[1]


def _length(data: Data) -> int | None:
    if isinstance(data, tuple) and isinstance(data[0], Tensor):
        return int(data[0].shape[0])
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def evaluate(model: AnalogModel, data: Data, batch_size: int = 500, calibration: Tensor | None = None,
             kpp_k: float = 1.0, progress: bool = True) -> EvalResult:
    """Per-chip accuracy of ``model`` on ``data`` ((inputs, labels) tensors, or an iterable of batches).

    Converters are calibrated first if needed, on ``calibration`` inputs or else on the first 256 inputs
    of ``data`` (no labels are used). Read noise is keyed by each image's position in ``data``, so the
    result does not depend on ``batch_size`` or on the chip chunking. Accuracies are fractions in [0, 1].
    """
    if not isinstance(model, AnalogModel):
        raise NvcimError("evaluate() needs the model returned by nvcim.convert()")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NvcimError(f"batch_size = {batch_size!r} is invalid: allowed an integer >= 1")
    start = time.perf_counter()
    if not model.is_calibrated():
        if calibration is None:
            calibration = next(_batches(data, 256))[0][:256]
        model.calibrate(calibration)
    n_total = _length(data)
    read_key = rng.key(model.seed, "evaluate")
    correct = torch.zeros(model.chips, dtype=torch.float64)
    ideal_correct, seen = 0, 0
    bar = tqdm(total=n_total, desc=f"{model.chips} chips", unit="img", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for xb, yb in _batches(data, batch_size):
                yb = yb.to(model.device)
                ids = torch.arange(seen, seen + xb.shape[0])
                logits = model(xb, image_ids=ids, read_key=read_key)  # (chips, B, classes)
                if logits.dim() != 3:
                    raise ShapeError(f"expected classifier outputs (B, classes), got {tuple(logits.shape[1:])}")
                correct += (logits.argmax(-1) == yb.view(1, -1)).sum(1).double().cpu()
                ideal_correct += int((model.digital(xb).argmax(-1) == yb).sum())
                seen += xb.shape[0]
                bar.update(xb.shape[0])
    finally:
        bar.close()
    if seen == 0:
        raise NvcimError("the dataset is empty")
    per_chip = (correct / seen).tolist()
    extra: dict[str, Any] = {"runtime": model.runtime_record()}
    if model.report is not None:  # what ran on the chip and what did not
        extra.update({"analog_share": model.report.analog_share, "conversion": model.report.to_dict()})
    return EvalResult(ideal_correct / seen, AccuracyStats(per_chip, kpp_k), model.chips, seen, model.seed,
                      time.perf_counter() - start, model.config.to_dict(), extra)
