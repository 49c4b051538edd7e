"""An experiment file: model, dataset, chip, sweep axes, methods, chip count and seeds; and its grid.

Example (TOML; YAML and JSON work the same)::

    name = "sigma-sweep"
    model = "lenet5"
    dataset = "fashion-mnist"
    chip = "rram-mlc-4bit"              # a preset or a config file (relative to the experiment file)
    chips = 100
    seeds = [0, 1]
    methods = ["none", "write-verify", "self-tune", "write-verify+self-tune"]

    [set]                                # fixed overrides of the chip config
    "circuit.adc_bits" = 6

    [sweep]                              # any config field by its dotted path -> values (full grid)
    "device.programming.sigma" = [0.05, 0.1, 0.2]

    [options.write-verify]               # method options
    fraction = 0.1

The file is data: it is parsed, never executed (a ``pkg.module:factory`` model or dataset name does import
and run that module, as on the command line).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ChipConfig, override
from ..config.io import parse_text
from ..errors import ConfigError, NvcimError

_FIELDS = {
    "name": "run name; also the default run folder runs/NAME",
    "model": "mlp, lenet5, vgg, resnet, resnet18, mobilenetv2, vit, gpt, or pkg.module:factory",
    "dataset": "digits, fashion-mnist, mnist, pystdlib, a folder or file (IDX, CIFAR, images, .npz/.pt, text), "
               "or pkg.module:factory",
    "metric": "what each chip is scored on: top1, topK, perplexity, token-ce, token-accuracy, mse, psnr "
              "(default: the dataset's: top1 for images, perplexity for text)",
    "epochs": "digital training epochs (0 = the default: 40 on digits, else 5)",
    "train_seed": "seed of the digital training (shared by every grid point)",
    "chip": "preset name or config file",
    "chips": "simulated chips per grid point",
    "seeds": "chip seeds; each is its own grid point",
    "methods": "method chains, 'none' for no mitigation, e.g. 'write-verify+self-tune'",
    "limit": "evaluate on the first N test images only (0 = all)",
    "batch_size": "images per evaluation batch",
    "memory_mb": "activation memory budget per chip block (MiB; 0 = auto: 1024, on a GPU a quarter of its free "
                 "memory); changes no result",
    "variance": "number format of the read-noise variance products: auto, float32 or bfloat16 (Runtime.variance); "
                "the resolved format is part of each point's identity",
    "set": "fixed config overrides {dotted.path: value}",
    "sweep": "sweep axes {dotted.path: [values]}",
    "options": "method options {method: {option: value}}",
    "hwa": "hardware-aware training before the grid: {chip = preset or config file, epochs = vat epochs (3), set = "
           "{dotted.path = value}}; the trained model is fine-tuned once with noise injection (the vat method) on "
           "chips of that config, cached, and every grid point starts from it",
}


@dataclass(frozen=True)
class Experiment:
    """A validated experiment description (see the module docstring for the file format)."""

    name: str
    model: str = "lenet5"
    dataset: str = "digits"
    epochs: int = 0
    train_seed: int = 0
    chip: str = "rram-mlc-4bit"
    chips: int = 100
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ("none",)
    limit: int = 0
    batch_size: int = 500
    memory_mb: float = 0.0
    variance: str = "auto"
    metric: str = ""  # "" = the dataset's default metric
    set: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    hwa: dict[str, Any] = field(default_factory=dict)  # {} = plain training; else chip, epochs, set
    base_dir: str = "."  # where relative chip config paths are resolved (the experiment file's folder)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"], d["methods"] = list(self.seeds), list(self.methods)
        return d

    def base_config(self) -> ChipConfig:
        from ..chip import resolve_config

        chip = self.chip
        if Path(self.base_dir, chip).is_file():
            chip = str(Path(self.base_dir, chip))
        cfg = resolve_config(chip)
        return override(cfg, self.set) if self.set else cfg

    def hwa_config(self) -> ChipConfig | None:
        """The chip config that hardware-aware training draws its noise from, or None without ``hwa``."""
        if not self.hwa:
            return None
        from ..chip import resolve_config

        chip = self.hwa["chip"]
        if Path(self.base_dir, chip).is_file():
            chip = str(Path(self.base_dir, chip))
        cfg = resolve_config(chip)
        return override(cfg, self.hwa["set"]) if self.hwa.get("set") else cfg

    def hwa_identity(self) -> dict[str, Any]:
        """What determines the hardware-aware model ({} without ``hwa``)."""
        cfg = self.hwa_config()
        return {} if cfg is None else {"config": cfg.to_dict(), "epochs": int(self.hwa.get("epochs", 3))}

    def points(self) -> list[Point]:
        """The full grid: every combination of sweep values x method chain x seed, in a stable order."""
        base = self.base_config()
        axes = list(self.sweep)
        out = []
        for values in itertools.product(*(self.sweep[a] for a in axes)):
            params = dict(zip(axes, values))
            try:
                cfg = override(base, params) if params else base
            except ConfigError as e:
                raise ConfigError(f"sweep: {e.path}", e.value, e.allowed, e.hint) from None
            for method in self.methods:
                for seed in self.seeds:
                    out.append(Point(self, params, method, seed, cfg))
        return out


@dataclass(frozen=True)
class Point:
    """One grid point: swept values, a method chain and a chip seed, with its resolved chip config."""

    experiment: Experiment
    params: dict[str, Any]
    method: str
    seed: int
    config: ChipConfig

    def identity(self) -> dict[str, Any]:
        """Everything that determines this point's result (not the experiment's name or folder)."""
        from ..chip.rng import DRAWS  # here: this module stays importable without torch

        e = self.experiment
        chain = self.chain()
        return {"model": e.model, "dataset": e.dataset, "epochs": e.epochs, "train_seed": e.train_seed,
                "chips": e.chips, "limit": e.limit, "seed": self.seed, "method": self.method,
                "options": {m: e.options.get(m, {}) for m in chain}, "config": self.config.identity_dict(),
                "numerics": {"variance": self.variance(), "draws": DRAWS},
                **({"metric": e.metric} if e.metric else {}),  # absent by default: older stores' keys hold
                **({"hwa": e.hwa_identity()} if e.hwa else {})}

    def variance(self) -> str:
        """The read-noise variance format this point is computed with: the experiment's, with "auto" resolved
        for this machine (bfloat16 on CPUs with native bfloat16 unless a GPU runs it). Part of the identity,
        so that a store shared by differently equipped machines never mixes the two under one key; the
        runner passes it explicitly. (Compiling changes no result, so it is not part of it.)"""
        e = self.experiment
        if e.variance != "auto":
            return e.variance
        import torch

        from ..chip.model import Runtime, variance_dtype

        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return "bfloat16" if variance_dtype(Runtime(), torch.float32, dev) == torch.bfloat16 else "float32"

    @property
    def key(self) -> str:
        """Stable id: a hash of :meth:`identity` (same inputs, same key, in any run)."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def chain(self) -> list[str]:
        return [] if self.method == "none" else [m.strip() for m in self.method.split("+")]

    def label(self) -> str:
        p = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.params.items())
        return f"{self.method} seed={self.seed}" + (f" {p}" if p else "")


def _need(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(name, value, allowed)


def _int(d: dict[str, Any], name: str, lo: int, default: int) -> int:
    v = d.get(name, default)
    _need(isinstance(v, int) and not isinstance(v, bool) and v >= lo, name, v, f"an integer >= {lo}")
    return int(v)


def from_dict(d: dict[str, Any], base_dir: str = ".", origin: str = "experiment") -> Experiment:
    """Validate a parsed experiment file; errors name the field and the allowed values."""
    try:
        return _from_dict(d, base_dir)
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e.path}", e.value, e.allowed, e.hint) from None


def _from_dict(d: dict[str, Any], base_dir: str) -> Experiment:
    unknown = set(d) - set(_FIELDS)
    if unknown:
        import difflib

        k = sorted(unknown, key=str)[0]
        if not isinstance(k, str):
            raise ConfigError(str(k), d[k], "a known field: " + ", ".join(_FIELDS))
        near = difflib.get_close_matches(k, list(_FIELDS), n=1)
        raise ConfigError(k, d[k], "a known field: " + ", ".join(_FIELDS), f"Did you mean '{near[0]}'?" if near else "")
    name = d.get("name", "")
    _need(isinstance(name, str) and bool(name.strip()), "name", name, "a non-empty string")
    for s in ("model", "dataset", "chip"):
        _need(isinstance(d.get(s, ""), str) and bool(str(d.get(s, "x")).strip()), s, d.get(s), "a non-empty string")
    seeds = d.get("seeds", [0])
    _need(isinstance(seeds, list) and len(seeds) > 0 and all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds), "seeds", seeds,
          "a non-empty list of integers")
    _need(len(set(seeds)) == len(seeds), "seeds", seeds, "distinct integers")
    methods = d.get("methods", ["none"])
    _need(isinstance(methods, list) and len(methods) > 0 and all(isinstance(m, str) for m in methods),
          "methods", methods, "a non-empty list of method chains such as 'none' or 'write-verify+self-tune'")
    from ..methods import names

    known = set(names())
    for m in methods:
        for part in ([] if m == "none" else m.split("+")):
            if part.strip() not in known:
                raise ConfigError("methods", m, "'none' or chains of: " + ", ".join(sorted(known)))
    sweep = d.get("sweep", {})
    _need(isinstance(sweep, dict), "sweep", sweep, "a table {dotted.path = [values]}")
    for k, v in sweep.items():
        _need(isinstance(v, list) and len(v) > 0, f"sweep.{k}", v, "a non-empty list of values")
    sets = d.get("set", {})
    _need(isinstance(sets, dict), "set", sets, "a table {dotted.path = value}")
    options = d.get("options", {})
    _need(isinstance(options, dict) and all(isinstance(v, dict) for v in options.values()), "options", options,
          "a table of tables {method = {option = value}}")
    chains = {p.strip() for m in methods for p in m.split("+")}
    for m in options:
        _need(m in chains, f"options.{m}", options[m], "options of a method named in 'methods'")
    memory = d.get("memory_mb", 0.0)
    _need(isinstance(memory, (int, float)) and not isinstance(memory, bool) and (memory == 0 or memory >= 1),
          "memory_mb", memory, "0 (auto) or a number >= 1 (MiB)")
    variance = d.get("variance", "auto")
    _need(variance in ("auto", "float32", "bfloat16"), "variance", variance, "one of auto, float32, bfloat16")
    metric = d.get("metric", "")
    _need(isinstance(metric, str), "metric", metric, "a metric name")
    if metric:
        from ..evaluation.task_metrics import get_metric

        try:
            get_metric(metric)
        except NvcimError:
            raise ConfigError("metric", metric, "top1, topK, perplexity, token-ce, token-accuracy, mse or psnr") \
                from None
    hwa = d.get("hwa", {})
    _need(isinstance(hwa, dict), "hwa", hwa, "a table {chip = ..., epochs = ..., set = {...}}")
    if hwa:
        for k in hwa:
            _need(k in ("chip", "epochs", "set"), f"hwa.{k}", hwa[k], "one of chip, epochs, set")
        _need(isinstance(hwa.get("chip"), str) and bool(str(hwa.get("chip", "")).strip()), "hwa.chip",
              hwa.get("chip"), "a preset name or config file")
        ep = hwa.get("epochs", 3)
        _need(isinstance(ep, int) and not isinstance(ep, bool) and ep >= 1, "hwa.epochs", ep, "an integer >= 1")
        _need(isinstance(hwa.get("set", {}), dict), "hwa.set", hwa.get("set"), "a table {dotted.path = value}")
    exp = Experiment(name=name.strip(), model=d.get("model", "lenet5"), dataset=d.get("dataset", "digits"),
                     epochs=_int(d, "epochs", 0, 0), train_seed=_int(d, "train_seed", 0, 0),
                     chip=d.get("chip", "rram-mlc-4bit"), chips=_int(d, "chips", 1, 100),
                     seeds=tuple(seeds), methods=tuple(methods), limit=_int(d, "limit", 0, 0),
                     batch_size=_int(d, "batch_size", 1, 500), memory_mb=float(memory), variance=variance,
                     metric=metric,
                     set=dict(sets),
                     sweep={k: list(v) for k, v in sweep.items()}, options={k: dict(v) for k, v in options.items()},
                     hwa=dict(hwa), base_dir=base_dir)
    for m, opts in exp.options.items():  # options are checked by building the method once
        from ..methods import get

        get(m, **opts)
    try:
        exp.hwa_config()
    except ConfigError as e:
        raise ConfigError(f"hwa: {e.path}", e.value, e.allowed, e.hint) from None
    exp.points()  # validates the chip, the fixed overrides and every swept value now, not mid-run
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Load and validate an experiment file (.toml, .yaml/.yml or .json)."""
    p = Path(path)
    if not p.is_file():
        raise NvcimError(f"experiment file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NvcimError(f"cannot read experiment file {p}: {e}") from None
    data = parse_text(text, p.suffix.lstrip(".").lower(), str(p))
    return from_dict(data, str(p.parent.resolve()), p.name)
