"""The ``nvcim`` command line: demo, train, evaluate, recover, run, results, report, analyze, presets, fields."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import NvcimError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lenet5", help="mlp, lenet5, vgg, resnet, resnet18, mobilenetv2, vit, or "
                   "pkg.module:factory (an import path runs that module's code)")
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist, mnist, a folder of IDX files, "
                   "or pkg.module:factory")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 40 on digits, else 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and of the chips")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", help="where to simulate and train: auto (a CUDA GPU when there "
                   "is one, else the CPU), cpu, cuda or cuda:N")


def _eval_opts(p: argparse.ArgumentParser, chips: int, chip: str, out: str) -> None:
    p.add_argument("--chip", default=chip, help="a preset name (see `nvcim presets`) or a .toml/.yaml/.json file")
    p.add_argument("--chips", type=int, default=chips, help="number of simulated chips")
    p.add_argument("--set", action="append", default=[], metavar="FIELD.PATH=VALUE",
                   help="override a config field, e.g. --set device.programming.sigma=0.2 (repeatable)")
    p.add_argument("--out", default=out, help="output folder for result.json and plots")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images only")
    p.add_argument("--weights", default=None, help="load these model weights (a state_dict file) instead "
                   "of training")
    p.add_argument("--memory-mb", type=float, default=0.0, help="activation memory budget per chip block (MiB; "
                   "0: auto, 1024 MiB, on a GPU a quarter of its free memory)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="fuse the analog epilogue with torch.compile (auto: once the work repays compiling; the "
                   "results are the same either way)")
    p.add_argument("--variance", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="number format of the read-noise variance products (auto: bfloat16 on CPUs with "
                   "native bfloat16; each noise std within 0.6 %% of float32)")


# cheap chains (seconds on 200 digits chips): two label-free ones and 5 % SRAM weights trained with labels
DEMO_CHAINS = "self-tune,map-correct+self-tune,rsa-faults"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nvcim", description="Simulate DNNs on non-volatile compute-in-memory "
                                 "chips, many chips at once.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="train (or load) a model on digits, run it on 200 RRAM chips, and recover the "
                       "accuracy with the best cheap method")
    _common(p)
    _eval_opts(p, 200, "rram-mlc-4bit", "out/demo")
    p.add_argument("--chains", default=DEMO_CHAINS, help="the recovery chains the demo tries (auto.chains)")
    p = sub.add_parser("train", help="train a built-in model and cache it")
    _common(p)
    p = sub.add_parser("evaluate", help="accuracy (or another metric's) distribution of a model over simulated "
                       "chips")
    _common(p)
    _eval_opts(p, 100, "rram-mlc-4bit", "out/evaluate")
    p.add_argument("--metric", default=None, help="what each chip is scored on: top1, top5, topK, perplexity, "
                   "token-ce, token-accuracy (language models), mse, psnr (default: the dataset's, top1 for "
                   "images and perplexity for text)")
    p = sub.add_parser("recover", help="apply recovery methods on every chip and report accuracy and cost")
    _common(p)
    _eval_opts(p, 100, "rram-mlc-4bit", "out/recover")
    p.add_argument("--metric", default=None, help="what chips are scored, trained and guarded on (default: the "
                   "dataset's: top1 for images, perplexity for text); see `nvcim evaluate --help`")
    p.add_argument("--method", required=True, help="NAME[+NAME...] applied in order, e.g. write-verify+self-tune "
                   "(see `nvcim methods`), or auto: try a budgeted set of chains and keep the best for its cost")
    p.add_argument("--check", type=int, default=None, metavar="N",
                   help="held-out labelled training examples that the guard and early stopping judge on (default: "
                   "15 %% of the training examples, at most 500); 500 images resolve about +-1.5 points")
    p.add_argument("--no-guard", action="store_true", help="apply every method blindly, even where it leaves a "
                   "chip worse than before (by default such chips are put back, see docs)")
    p.add_argument("--opt", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="a method option, e.g. --opt write-verify.fraction=0.1 (repeatable)")
    p = sub.add_parser("run", help="run an experiment file (sweeps x methods x seeds) into a resumable store")
    p.add_argument("experiment", help="experiment file (.toml/.yaml/.json), see examples/")
    p.add_argument("--out", default=None, help="run folder holding results.sqlite (default: runs/NAME)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and a time estimate, run nothing")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local cluster)")
    p.add_argument("--workers", type=int, default=0, help="CPUs of a local Ray cluster (default: all)")
    p.add_argument("--report", action="store_true", help="write the HTML report when the run ends")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("results", help="list or export a run's results store")
    p.add_argument("run", help="run folder or results.sqlite file")
    p.add_argument("--export", default=None, metavar="FILE", help="write the points to FILE (.csv, .json, .parquet)")
    p.add_argument("--format", choices=("csv", "json", "parquet"), default=None)
    p.add_argument("--experiment", default=None, help="only this experiment's points")
    p.add_argument("--per-chip", action="store_true", help="export per-chip accuracies too (json/parquet)")
    p = sub.add_parser("report", help="HTML report with figures for a run")
    p.add_argument("run", help="run folder or results.sqlite file")
    p.add_argument("--out", default=None, help="report folder (default: RUN/report)")
    p.add_argument("--experiment", default=None)
    p = sub.add_parser("analyze", help="attribute the accuracy loss to each non-ideality and each layer")
    _common(p)
    _eval_opts(p, 100, "rram-mlc-4bit", "out/analyze")
    sub.add_parser("methods", help="list the recovery methods")
    p = sub.add_parser("presets", help="list presets, or show one")
    p.add_argument("name", nargs="?")
    p.add_argument("--format", choices=("toml", "yaml", "json"), default="toml")
    sub.add_parser("fields", help="every config field with its unit, range and meaning")
    return ap


def resolve_device(name: str):  # type: ignore[no-untyped-def]
    """``--device``: auto, cpu, cuda or cuda:N, checked against what this machine has."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise NvcimError(f"--device = {name!r} is invalid: allowed auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise NvcimError(f"--device = {name!r} is invalid: this machine has no CUDA GPU that PyTorch "
                             f"{torch.__version__} can use; allowed: auto or cpu")
        if (dev.index or 0) >= n:
            raise NvcimError(f"--device = {name!r} is invalid: allowed cuda:0 to cuda:{n - 1}")
    return dev


def _prepare(args: argparse.Namespace, convert_model: bool = True):  # type: ignore[no-untyped-def]
    """Config, dataset, trained model and the converted, calibrated chips for evaluate/recover (the digital
    model instead when ``convert_model`` is false)."""
    import torch

    from .. import convert
    from ..chip import Runtime, resolve_config
    from ..config import override, parse_sets
    from ..experiments import build_model, load_dataset, trained_model

    device = resolve_device(args.device)
    config = resolve_config(args.chip)
    if args.set:
        config = override(config, parse_sets(args.set))
    if args.limit < 0:
        raise NvcimError(f"--limit = {args.limit} is invalid: allowed an integer >= 0")
    data = load_dataset(args.dataset)
    if args.weights:
        model = build_model(args.model, data.in_shape, data.classes)
        try:
            model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
            model.to(device)
        except Exception as e:  # noqa: BLE001 - unreadable, not a state_dict, or refused by weights_only
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NvcimError(f"cannot load weights {args.weights}: {first} (only plain state_dicts of tensors "
                             "are accepted: they are loaded with weights_only=True)") from None
        info = {"model": args.model, "weights": args.weights}
    else:
        model, info = trained_model(args.model, data, args.epochs, args.seed, progress=not args.quiet,
                                    device=device)
    test = data.test if not args.limit else (data.test[0][:args.limit], data.test[1][:args.limit])
    if not convert_model:
        return config, data, info, test, model
    chip_model = convert(model, config, chips=args.chips, seed=args.seed, inplace=True,  # loaded for this
                         runtime=Runtime(memory_mb=args.memory_mb, compile=args.compile,
                                         variance=args.variance))
    chip_model.calibrate(data.train[0][:256])
    return config, data, info, test, chip_model


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .. import evaluate
    from ..evaluation.report import write_outputs
    from ..evaluation.task_metrics import get_metric

    if args.metric is not None:
        get_metric(args.metric)  # a bad name is refused before any work
    config, data, info, test, chip_model = _prepare(args)
    metric = get_metric(args.metric or data.metric)
    result = evaluate(chip_model, test, batch_size=args.batch_size, progress=not args.quiet, metric=metric)
    result.extra.update({"model": info, "dataset": data.name, "chip": config.name})
    title = f"{args.model} on {data.name}, {config.name}: {args.chips} chips"
    out = write_outputs(result, config, args.out, title)
    print(f"{title}\n  {chip_model.report.share_line()}\n  {result.summary()}\n"
          f"  wrote {out / 'result.json'} and {out / 'accuracy_hist.png'}")
    return 0


def _method_options(items: list[str]) -> dict[str, dict[str, object]]:
    from ..config.io import parse_value

    opts: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, option = key.strip().rpartition(".")
        if not sep or not dot or not method:
            raise NvcimError(f"--opt {item!r}: expected METHOD.OPTION=VALUE, e.g. write-verify.fraction=0.1")
        opts.setdefault(method, {})[option] = parse_value(value)
    return opts


def cmd_recover(args: argparse.Namespace) -> int:
    from ..methods import get

    chain = [m.strip() for m in args.method.split("+") if m.strip()]
    opts = _method_options(args.opt)
    unknown = set(opts) - set(chain)
    if unknown:
        raise NvcimError(f"--opt names {', '.join(sorted(unknown))}, which is not in --method {args.method}")
    methods = [get(m, **opts.get(m, {})) for m in chain]
    if args.metric is not None:
        from ..evaluation.task_metrics import get_metric

        get_metric(args.metric)  # a bad name is refused before any work
    config, data, info, test, chip_model = _prepare(args)
    title = f"{args.model} on {data.name}, {config.name}, {args.method}: {args.chips} chips"
    report, out = _recover_and_write(args, methods, config, data, info, test, chip_model, title)
    print(f"{title}\n  {chip_model.report.share_line()}\n  {report.summary()}\n"
          f"  cost: {report.cost.write_verify_pulses:.0f} write-verify pulses "
          f"per chip, {100 * report.cost.sram_fraction:.1f} % SRAM, {report.cost.labelled_samples} labelled and "
          f"{report.cost.calibration_samples} unlabelled inputs, {report.cost.wall_time_s:.1f} s")
    _print_auto(methods, out)
    _story(report, out / "recovery.png", title, args.method)
    print(f"  wrote {out / 'result.json'} and {out / 'recovery.png'}")
    return 0


def _recover_and_write(args, methods, config, data, info, test, chip_model, title):  # type: ignore[no-untyped-def]
    """Run ``methods`` on the chips, write result.json (with the auto trials), the histogram and, for auto,
    pareto.png; returns (report, folder)."""
    from ..evaluation.report import write_outputs
    from ..methods import TaskData, recover
    from ..methods.auto import Auto, plot

    task = TaskData(data.train, data.train[0], metric=getattr(args, "metric", None) or data.metric)
    check = getattr(args, "check", None)
    if check is not None:
        n = len(data.train[1])
        if not 1 <= check <= n // 2:
            raise NvcimError(f"--check {check} is invalid: allowed 1 .. {n // 2} (half of the {n} training examples)")
        task = task.with_check(fraction=0.5, most=check)
    report = recover(chip_model, methods, task, test,
                     batch_size=args.batch_size, progress=not args.quiet, guard=not getattr(args, "no_guard", False))
    report.after.extra.update({"model": info, "dataset": data.name, "chip": config.name,
                               "methods": [m.name for m in methods],
                               "degraded_accuracy": report.before.accuracy.to_dict(),
                               "cost": report.cost.to_dict(), "recovery_ratio": report.recovery_ratio,
                               "reverted_chips": [{"method": m, "chips": n} for m, n in report.reverted]})
    autos = [m for m in methods if isinstance(m, Auto)]
    if autos:
        report.after.extra["auto_trials"] = autos[-1].to_dict()
        # what the trials' check scores are: auto ranks by top-1 accuracy (and refuses other metrics)
        report.after.extra["auto_check_metric"] = {"name": "top1", "higher_is_better": True, "unit": "%"}
    out = write_outputs(report.after, config, args.out, title)
    if autos:
        plot(autos[-1].trials, str(out / "pareto.png"), f"{title}: check accuracy against cost")
    return report, out


def _print_auto(methods, out) -> None:  # type: ignore[no-untyped-def]
    from ..methods.auto import Auto, table

    for m in methods:
        if isinstance(m, Auto):
            print("  chains tried (accuracy on held-out check inputs; costs per chip):")
            print("\n".join("    " + line for line in table(m.trials).splitlines()))
            print(f"  wrote {out / 'pareto.png'}")


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole story on the embedded digits: ideal model, the chips' loss, the best cheap recovery."""
    from ..methods import get

    config, data, info, test, chip_model = _prepare(args)
    auto = get("auto", chains=args.chains)
    title = f"{args.model} on {data.name}, {config.name}: {args.chips} chips"
    report, out = _recover_and_write(args, [auto], config, data, info, test, chip_model, title)
    b, a, c = report.before, report.after, report.cost
    pick = next(t for t in auto.trials if t.chosen)  # type: ignore[attr-defined]
    print(f"{title}\n"
          f"  {chip_model.report.share_line()}\n"
          f"  1. ideal (digital) model   {100 * b.ideal_accuracy:6.2f} %\n"
          f"  2. on the chips            {100 * b.accuracy.mean:6.2f} ± {100 * b.accuracy.std:.2f} % "
          f"(worst 1 %: {100 * b.accuracy.kpp:.2f} %)\n"
          f"  3. recovered               {100 * a.accuracy.mean:6.2f} ± {100 * a.accuracy.std:.2f} % "
          f"(worst 1 %: {100 * a.accuracy.kpp:.2f} %), recovery ratio {report.recovery_ratio:.2f}\n"
          f"     with {pick.chain}: {c.write_verify_pulses:.0f} write pulses per chip, {100 * c.sram_fraction:.1f} % "
          f"SRAM weights, {c.labelled_samples} labelled and {c.calibration_samples} unlabelled inputs, "
          f"{c.wall_time_s:.0f} s for the search and the {args.chips} chips"
          + (f"\n  note: {b.accuracy.kpp_note()}" if not b.accuracy.kpp_bounded else ""))
    _print_auto([auto], out)
    _story(report, out / "demo.png", title, f"auto: {pick.chain}")
    print(f"  wrote {out / 'result.json'} and {out / 'demo.png'}")
    return 0


def _story(report, path: Path, title: str, how: str) -> None:  # type: ignore[no-untyped-def]
    """PNG: per-chip accuracy (or the task's metric) before and after recovery, with the ideal value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = report.before
    pct = b.metric.get("unit") == "%"
    k = 100.0 if pct else 1.0
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    before = [k * v for v in b.accuracy.per_chip]
    after = [k * v for v in report.after.accuracy.per_chip]
    lo, hi = min(before + after + [k * b.ideal_accuracy]), max(before + after + [k * b.ideal_accuracy])
    bins = [i for i in range(0, 101, 2)] if pct else [lo + (hi - lo) * i / 40 for i in range(41)]
    ax.hist(before, bins=bins, color="#C44E52", alpha=0.8, label=f"on the chips, {b.fmt(b.accuracy.mean)}")
    ax.hist(after, bins=bins, color="#55A868", alpha=0.8, label=f"recovered ({how}), "
            f"{b.fmt(report.after.accuracy.mean)}")
    ax.axvline(k * b.ideal_accuracy, color="k", ls="--", label=f"ideal {b.fmt(b.ideal_accuracy)}")
    name, unit = b.metric.get("name", "top1"), "%" if pct else b.metric.get("unit", "")
    ax.set_xlabel(("test accuracy" if name == "top1" else name) + " per chip" + (f" ({unit})" if unit else ""))
    ax.set_ylabel("chips")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_run(args: argparse.Namespace) -> int:
    from ..experiments.runner import print_grid, run
    from ..experiments.spec import load_experiment

    exp = load_experiment(args.experiment)
    run_dir = Path(args.out or Path("runs") / exp.name)
    if args.dry_run:
        print_grid(exp, run_dir)
        return 0
    executor = None
    if args.executor == "ray":
        from ..experiments.ray_executor import RayExecutor

        if args.workers < 0:
            raise NvcimError(f"--workers = {args.workers} is invalid: allowed an integer >= 0")
        executor = RayExecutor(args.address, args.workers or None)
    summary = run(exp, run_dir, executor, progress=not args.quiet)
    print(f"{exp.name}: {summary.text()}\n  store: {run_dir / 'results.sqlite'}")
    if summary.failed:
        print("nvcim: error: the run stopped on a failure; finished points are kept in the store and a re-run "
              "resumes", file=sys.stderr)
        return 1
    if args.report:
        from ..experiments.report import write_report

        print(f"  report: {write_report(run_dir)}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from ..experiments.export import export, table

    if args.export:
        n = export(args.run, args.export, args.format, args.experiment, args.per_chip)
        print(f"wrote {n} points to {args.export}")
        return 0
    rows = table(args.run, args.experiment)
    if not rows:
        print("the store holds no finished points")
        return 0
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    head = ["experiment", "method", "seed"] + [p.rsplit(".", 1)[-1] for p in params] + ["ideal", "mean", "std",
                                                                                       "worst1%", "recovery"]
    print("  ".join(f"{h:>10s}" for h in head))
    for r in rows:
        rr = r["recovery_ratio"]
        vals = [r["experiment"], r["method"], r["seed"]] + [r.get(p, "") for p in params] + [
            f"{100 * r['ideal_accuracy']:.2f}", f"{100 * r['accuracy_mean']:.2f}", f"{100 * r['accuracy_std']:.2f}",
            f"{100 * r['accuracy_kpp']:.2f}", "-" if rr is None else f"{rr:.2f}"]
        print("  ".join(f"{str(v)[:10]:>10s}" for v in vals))
    print(f"{len(rows)} points")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    print(f"wrote {write_report(args.run, args.out, args.experiment)}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..experiments.analyze import analyze, write

    config, data, info, test, chip_model = _prepare(args, convert_model=False)
    if data.metric != "top1":
        raise NvcimError(f"analyze attributes the loss in accuracy points of a classifier; dataset {data.name} is "
                         f"scored on {data.metric}, which it does not handle yet: sweep the effects with nvcim run")
    result = analyze(chip_model, config, test, data.train[0][:256], chips=args.chips, seed=args.seed,
                     batch_size=args.batch_size, progress=not args.quiet)
    out = write(result, args.out, f"{args.model} on {data.name}, {config.name}: impact analysis "
                f"({args.chips} chips, error bars 1 s.e.)")
    print(result.table())
    print(f"wrote {out / 'analysis.json'} and {out / 'impact.png'}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import get, names

    for name in names():
        doc = (type(get(name)).__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..evaluation.task_metrics import get_metric
    from ..experiments import accuracy, load_dataset, trained_model

    data = load_dataset(args.dataset)
    model, info = trained_model(args.model, data, args.epochs, args.seed, progress=not args.quiet,
                                device=resolve_device(args.device))
    metric = get_metric(data.metric)
    value = accuracy(model, *data.test, metric=data.metric)
    print(f"{args.model} on {data.name}: test {metric.name} {metric.format(value)} "
          f"({'from cache' if info['cached'] else 'trained'}: {info['cache']})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..config import dumps, preset, preset_names

    if args.name:
        print(dumps(preset(args.name), args.format), end="")
        return 0
    for name in preset_names():
        src = preset(name).source
        print(f"{name:18s} {src[:100]}{'...' if len(src) > 100 else ''}")
    return 0


def cmd_fields(args: argparse.Namespace) -> int:
    from ..config import ChipConfig, describe

    for path, default, allowed, doc in describe(ChipConfig):
        print(f"{path:34s} default {default!r:<10} {allowed:28s} {doc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"demo": cmd_demo, "evaluate": cmd_evaluate, "recover": cmd_recover, "methods": cmd_methods,
                "train": cmd_train, "run": cmd_run, "results": cmd_results,
                "report": cmd_report, "analyze": cmd_analyze, "presets": cmd_presets, "fields": cmd_fields}
    try:
        return handlers[args.cmd](args)
    except NvcimError as e:
        print(f"nvcim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nvcim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
