"""``evaluate``: a metric (accuracy by default) of every chip of an AnalogModel on a dataset, in batched passes."""

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
from .task_metrics import Metric, get_metric

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. ``to_dict()`` has the keys of the command line's result.json.

    ``accuracy`` and ``ideal_accuracy`` hold the values of the metric named in ``metric`` (top-1 accuracy by
    default; perplexity, MSE, ... for other tasks): the names stay those of classification so that results
    of every task are read the same way."""

    ideal_accuracy: float
    accuracy: AccuracyStats
    chips: int
    images: int
    seed: int
    wall_time_s: float
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, Any] = field(default_factory=lambda: {"name": "top1", "higher_is_better": True, "unit": "%"})

    @property
    def chip_images_per_s(self) -> float:
        return self.chips * self.images / max(self.wall_time_s, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"nvcim_version": __version__, "ideal_accuracy": self.ideal_accuracy,
                "accuracy": self.accuracy.to_dict(), "chips": self.chips, "images": self.images,
                "seed": self.seed, "wall_time_s": self.wall_time_s,
                "chip_images_per_s": self.chip_images_per_s, "config": self.config, "metric": self.metric,
                **self.extra}

    def fmt(self, v: float) -> str:
        """A value of this result's metric as text (percent for fractions)."""
        unit = self.metric.get("unit", "")
        return f"{100 * v:.2f} %" if unit == "%" else f"{v:.4g}" + (f" {unit}" if unit else "")

    def summary(self) -> str:
        a, name = self.accuracy, self.metric.get("name", "top1")
        spread = f"{100 * a.std:.2f} %" if self.metric.get("unit") == "%" else f"{a.std:.3g}"
        best = "max" if not self.metric.get("higher_is_better", True) else "min"
        return (f"{name}: ideal {self.fmt(self.ideal_accuracy)}  |  chips ({self.chips}): "
                f"{self.fmt(a.mean)} ± {spread}, worst {a.kpp_k:g} % {self.fmt(a.kpp)}, "
                f"{best} {self.fmt(a.max if best == 'max' else a.min)}  |  {self.wall_time_s:.1f} s"
                + (f"\n  note: {a.kpp_note()}" if not a.kpp_bounded else ""))


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
             kpp_k: float = 1.0, progress: bool = True, metric: str | Metric | None = None) -> EvalResult:
    """Per-chip ``metric`` of ``model`` on ``data`` ((inputs, targets) tensors, or an iterable of batches):
    top-1 accuracy by default; see :mod:`.task_metrics` for perplexity, MSE and the rest.

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
    score = get_metric(metric)
    n_total = _length(data)
    read_key = rng.key(model.seed, "evaluate")
    total = torch.zeros(model.chips, dtype=torch.float64)
    ideal_total = torch.zeros(1, dtype=torch.float64)
    count, seen = 0.0, 0
    bar = tqdm(total=n_total, desc=f"{model.chips} chips", unit="img", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for xb, yb in _batches(data, batch_size):
                yb = yb.to(model.device)
                ids = torch.arange(seen, seen + xb.shape[0])
                out = model(xb, image_ids=ids, read_key=read_key)  # (chips, B, ...)
                if not isinstance(out, Tensor):
                    raise ShapeError(f"metric {score.name} needs the model to return one tensor, got "
                                     f"{type(out).__name__}: wrap the model to return its main output")
                sums, n = score.batch(out, yb)
                total += sums
                ideal_total += score.batch(model.digital(xb).unsqueeze(0), yb)[0]
                count += n
                seen += xb.shape[0]
                bar.update(xb.shape[0])
    finally:
        bar.close()
    if seen == 0:
        raise NvcimError("the dataset is empty")
    per_chip = score.finish(total, count).tolist()
    extra: dict[str, Any] = {"runtime": model.runtime_record()}
    if model.report is not None:  # what ran on the chip and what did not
        extra.update({"analog_share": model.report.analog_share, "conversion": model.report.to_dict()})
    return EvalResult(float(score.finish(ideal_total, count)[0]),
                      AccuracyStats(per_chip, kpp_k, score.higher_is_better), model.chips, seen, model.seed,
                      time.perf_counter() - start, model.config.to_dict(), extra,
                      {"name": score.name, "higher_is_better": score.higher_is_better, "unit": score.unit})
