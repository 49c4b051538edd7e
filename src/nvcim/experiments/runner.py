"""Run an experiment's grid into its results store: resumable, one atomic row per finished point.

``compute_point`` is the whole work of one grid point and depends only on the point (its config, method
chain, seed): that is what lets the local and the Ray executors give identical results. The driver
(:func:`run`) alone writes to the store.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import NvcimError
from .spec import Experiment, Point
from .store import Store


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """nvcim's version, plus the git commit when running from a checkout."""
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            return f"{__version__}+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


@functools.lru_cache(maxsize=4)
def _dataset(name: str):  # type: ignore[no-untyped-def]
    from .datasets import load_dataset

    return load_dataset(name)


@functools.lru_cache(maxsize=8)
def _trained(model: str, dataset: str, epochs: int, seed: int, progress: bool = False):  # type: ignore[no-untyped-def]
    from .training import trained_model

    return trained_model(model, _dataset(dataset), epochs or None, seed, progress=progress)


@functools.lru_cache(maxsize=4)
def _hwa_trained(model: str, dataset: str, epochs: int, seed: int, hwa: str, progress: bool = False
                 ):  # type: ignore[no-untyped-def]
    """The trained model fine-tuned with noise injection (the vat method, ``hwa``: the JSON of
    :meth:`Experiment.hwa_identity`) on one chip of that config, from the model cache or trained now and
    cached. Returns (model, info)."""
    from ..chip import convert
    from ..chip.simulated import SimulatedChip
    from ..config import ChipConfig
    from ..methods import TaskData, get
    from .training import cache_dir

    spec = json.loads(hwa)
    base, info = _trained(model, dataset, epochs, seed)
    net = copy.deepcopy(base)
    digest = hashlib.sha256(json.dumps([info.get("cache"), spec], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "models" / f"{Path(str(info.get('cache', model))).stem}-hwa-{digest}.pt"
    info = {**info, "hwa": {"epochs": spec["epochs"], "cache": str(path)}}
    if path.is_file():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval(), {**info, "hwa": {**info["hwa"], "cached": True}}
        except Exception as e:  # unreadable or stale: train again rather than fail
            warnings.warn(f"ignoring unreadable cached model {path}: {e}", stacklevel=2)
    data = _dataset(dataset)
    work = copy.deepcopy(base)  # trained on the chip below; its weights are read back into net
    chips = convert(work, ChipConfig.from_dict(spec["config"]), chips=1, seed=seed, inplace=True)
    chips.calibrate(data.train[0][:256])
    get("vat", epochs=spec["epochs"], patience=0).apply(SimulatedChip(chips), TaskData(data.train, data.train[0],
                                                                                       metric=data.metric),
                                                        progress=progress)
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in work.state_dict().items() if k in own})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return net.eval(), {**info, "hwa": {**info["hwa"], "cached": False}}


def compute_point(point: Point, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Evaluate (and recover, if the point has methods) one grid point; returns its result dict.
    ``progress`` shows the inner bars (chips x images, method steps) under the run's bar."""
    from ..chip import Runtime, convert
    from ..evaluation import evaluate
    from ..evaluation.hardware import hardware_cost
    from ..methods import Cost, Method, TaskData, get, recover

    e = point.experiment
    data = _dataset(e.dataset)
    if e.hwa:
        net, info = _hwa_trained(e.model, e.dataset, e.epochs, e.train_seed,
                                 json.dumps(e.hwa_identity(), sort_keys=True), progress)
    else:
        net, info = _trained(e.model, e.dataset, e.epochs, e.train_seed)
    net = copy.deepcopy(net).to(device)  # methods may retrain: the cached model stays as trained
    test = data.test if not e.limit else (data.test[0][:e.limit], data.test[1][:e.limit])
    test = (test[0].to(device), test[1].to(device))
    train = (data.train[0].to(device), data.train[1].to(device))
    runtime = Runtime(memory_mb=e.memory_mb, variance=point.variance())  # as the point's key says
    model = convert(net, point.config, chips=e.chips, seed=point.seed, runtime=runtime, inplace=True)
    model.calibrate(train[0][:256])
    chain = point.chain()
    if chain:
        methods: list[Method | str] = [get(m, **e.options.get(m, {})) for m in chain]
        rep = recover(model, methods, TaskData(train, train[0]), test, batch_size=e.batch_size, progress=progress,
                      metric=e.metric or data.metric)
        result = rep.to_dict()
        cost = rep.cost
    else:
        result = evaluate(model, test, batch_size=e.batch_size, progress=progress,
                          metric=e.metric or data.metric).to_dict()
        result.update({"methods": [], "recovery_ratio": None, "degraded_accuracy": None})
        cost = Cost()
        result["cost"] = cost.to_dict()
    result["hardware"] = hardware_cost(model, test[0][:1], cost.write_verify_pulses).to_dict()
    result["model"] = {"name": e.model, "epochs": info.get("epochs"), "train_seed": e.train_seed,
                       **({"hwa_epochs": info["hwa"]["epochs"]} if "hwa" in info else {})}
    result["dataset"] = data.name
    result["params"] = point.params
    result.pop("wall_time_s", None)  # timing lives in the store's own column: results stay comparable
    result.pop("chip_images_per_s", None)
    return result


@dataclass
class RunSummary:
    total: int
    skipped: int = 0
    computed: int = 0
    busy: int = 0  # claimed by another live run on the same store
    failed: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    repaired: list[str] = field(default_factory=list)

    def text(self) -> str:
        s = (f"{self.total} points: {self.computed} computed, {self.skipped} already in the store"
             + (f", {self.busy} left to another run" if self.busy else "") + f", in {self.wall_time_s:.1f} s")
        return s + (f"; FAILED: {'; '.join(self.failed)}" if self.failed else "")


Executor = Callable[[Iterable[Point]], Iterator[tuple[Point, dict[str, Any], float, float]]]


def local_executor(points: Iterable[Point], progress: bool = False
                   ) -> Iterator[tuple[Point, dict[str, Any], float, float]]:
    """Points one after the other in this process (on the GPU if there is one); yields (point, result,
    started, seconds)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for p in points:
        t0, started = time.perf_counter(), time.time()
        yield p, compute_point(p, device, progress), started, time.perf_counter() - t0


def run(exp: Experiment, run_dir: str | Path, executor: Executor | None = None, progress: bool = True,
        log: Callable[[str], None] = print) -> RunSummary:
    """Compute every grid point of ``exp`` that is not yet in ``run_dir``'s store; stored points are skipped.

    Each point is claimed, computed and written in one transaction, so an interrupted run (even by
    SIGKILL) loses at most the points in flight and a re-run picks up where it stopped.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    points = exp.points()
    summary = RunSummary(total=len(points))
    with Store(run_dir) as store:
        summary.repaired = list(store.repaired)
        for msg in store.repaired:
            log(f"nvcim: warning: {msg}")
        done = store.done_keys()
        todo = [p for p in points if p.key not in done]
        summary.skipped = len(points) - len(todo)

        def claimed() -> Iterator[Point]:
            # claimed one at a time, just before it is computed, so that runs sharing a store share the work
            for p in todo:
                if store.claim(p.key):
                    yield p
                else:
                    summary.busy += 1

        if todo:  # train (or load) the model here once, with a progress bar, before any worker needs it
            try:
                net, info = _trained(exp.model, exp.dataset, exp.epochs, exp.train_seed, progress)
            except NvcimError as err:
                summary.failed.append(str(err))
                summary.wall_time_s = time.perf_counter() - start
                return summary
            if not info["cached"]:
                log(f"trained {exp.model} on {exp.dataset} and cached it: {info['cache']}")
        bar = tqdm(total=len(points), initial=summary.skipped, desc=exp.name, unit="point", disable=not progress,
                   dynamic_ncols=True)
        try:
            execute = executor or functools.partial(local_executor, progress=progress)
            for p, result, started, secs in execute(claimed()):
                store.put(p.key, exp.name, p.params, p.method, p.seed, p.config.to_dict(), result, code_version(),
                          started, secs)
                summary.computed += 1
                acc = result["accuracy"]["mean"]
                bar.set_postfix_str(f"{p.label()[:40]}: {100 * acc:.1f} %")
                bar.update(1)
        except NvcimError as err:
            summary.failed.append(str(err))
        except Exception as err:  # noqa: BLE001 - a point's failure ends the run cleanly, stored points stay
            summary.failed.append(f"{type(err).__name__}: {err}")
        finally:
            bar.close()
            summary.wall_time_s = time.perf_counter() - start
    return summary


def estimate(exp: Experiment, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Grid size and a rough time estimate: one probe evaluation (8 chips, up to 256 images) on this
    machine, scaled by chips x images, times a rough factor per method (training methods dominate)."""
    from ..chip import convert
    from ..evaluation import evaluate

    points = exp.points()
    done: set[str] = set()
    if run_dir is not None and Path(run_dir, "results.sqlite").is_file():
        with Store(run_dir, readonly=True) as store:
            done = store.done_keys()
    data = _dataset(exp.dataset)
    t0 = time.perf_counter()
    net, info = _trained(exp.model, exp.dataset, exp.epochs, exp.train_seed)
    train_s = time.perf_counter() - t0
    n_img = min(256, len(data.test[1]))
    probe = convert(net, points[0].config, chips=8, seed=0)
    probe.calibrate(data.train[0][:256])
    t0 = time.perf_counter()
    evaluate(probe, (data.test[0][:n_img], data.test[1][:n_img]), progress=False)
    per_chip_image = (time.perf_counter() - t0) / (8 * n_img)
    images = exp.limit or len(data.test[1])
    factor = {"none": 1.0, "self-tune": 2.5, "map-correct": 3.0, "write-verify": 3.0, "chip-kd": 8.0, "rsa": 8.0,
              "vat": 30.0, "qvat": 30.0, "kd": 30.0}
    seconds = 0.0
    for p in points:
        if p.key in done:
            continue
        f = 1.0 + sum(factor.get(m, 5.0) for m in p.chain())
        seconds += f * exp.chips * images * per_chip_image
    return {"points": len(points), "done": sum(p.key in done for p in points), "done_keys": done,
            "estimate_s": seconds,
            "probe_chip_images_per_s": 1.0 / per_chip_image, "training_s": train_s, "cached_model": info["cached"]}


def print_grid(exp: Experiment, run_dir: str | Path | None, out: Callable[[str], None] = print) -> None:
    """The ``--dry-run`` listing: every point with its status, then the estimate."""
    est = estimate(exp, run_dir)
    done = est["done_keys"]
    out(f"experiment {exp.name}: {exp.model} on {exp.dataset}, chip {exp.chip}, {exp.chips} chips per point")
    axes = list(exp.sweep)
    out(f"  axes: {', '.join(f'{a} ({len(exp.sweep[a])})' for a in axes) or 'none'}; methods: "
        f"{', '.join(exp.methods)}; seeds: {', '.join(map(str, exp.seeds))}")
    for i, p in enumerate(exp.points()):
        out(f"  {i + 1:4d}  {'done' if p.key in done else 'todo'}  {p.key[:10]}  {p.label()}")
    mins = est["estimate_s"] / 60
    out(f"{est['points']} points, {est['done']} done; estimated {mins:.1f} min for the rest on this machine "
        f"(probe: {est['probe_chip_images_per_s']:.0f} chip-images/s; rough factors for methods"
        + ("" if est["cached_model"] else f"; training the model took {est['training_s']:.0f} s") + ")")

