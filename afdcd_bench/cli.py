"""`afdcd-bench` subcommands: thin wrappers over the package."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from rich.console import Console


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_recipe
    from .engine import train

    cfg = load_recipe(args.recipe, args.overrides)
    record = train(cfg, results_dir=args.results_dir, per_device_batch=args.per_device_batch, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        Console().print(f"final mIoU {100 * (record['final_miou'] or float('nan')):.2f}, best {100 * (record['best_miou'] or float('nan')):.2f}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import Accelerator, DataLoaderConfiguration
    from torch.utils.data import DataLoader

    from .config import load_recipe
    from .data import build_dataset, resolve_root
    from .engine import evaluate
    from .models import load_segmentor

    cfg = load_recipe(args.recipe, args.overrides)
    model = load_segmentor(args.checkpoint)
    ds = build_dataset(cfg.data.name, resolve_root(cfg.data.name, cfg.data.root), cfg.data.val_split,
                       normalization=model.build_args["normalization"])
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(even_batches=False))
    model, loader = acc.prepare(model, DataLoader(ds, batch_size=cfg.eval.batch_size))
    writer = None
    if args.save_predictions:
        from .engine.predictions import PredictionWriter

        writer = PredictionWriter(args.save_predictions, cfg.benchmark)
    scores = evaluate(model, loader, cfg.num_classes, acc, cfg.eval, on_batch=writer)
    if acc.is_main_process:
        print(json.dumps({"miou": scores["miou"], "pixel_acc": scores["pixel_acc"], "iou": scores["iou"]}, indent=2))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .config import list_recipes
    from .harness.table import expected_runs, records_frame, render, summary, write_tables

    frame = records_frame(args.results_dir)
    folders = sorted({r.split("/")[0] for r in frame["recipe"]})  # recipes/<folder>/ of the runs found
    table = summary(frame, expected_runs([n for f in folders for n in list_recipes(f)]))
    render(table)
    if not table.empty:
        write_tables(table, args.results_dir)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .config import list_recipes, load_recipe, run_method, to_dict

    names = list_recipes()
    if args.format == "json":
        rows = []
        for n in names:
            cfg = load_recipe(n)
            distilled = cfg.teacher is not None and cfg.method.name != "baseline"
            rows.append({"recipe": n, "benchmark": cfg.benchmark, "method": run_method(n, cfg.method.name),
                         "student": f"{cfg.student.arch}-{cfg.student.backbone}",
                         "teacher": f"{cfg.teacher.arch}-{cfg.teacher.backbone}" if distilled else None,
                         "published_miou": cfg.published.miou, "config": to_dict(cfg)})
        print(json.dumps(rows, indent=2))
    else:
        for n in names:
            cfg = load_recipe(n)
            teacher = f" <- {cfg.teacher.arch}-{cfg.teacher.backbone}" if cfg.teacher and cfg.method.name != "baseline" else ""
            print(f"{n:40s} {cfg.benchmark:16s} {cfg.method.name:9s} {cfg.student.arch}-{cfg.student.backbone}{teacher}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .harness.reproduce import reproduce

    reproduce(args.benchmark, seeds=args.seeds, data_root=args.data_root, teacher=args.teacher, quick=args.quick,
              results_dir=args.results_dir, output_dir=args.output_dir, launcher=args.launcher, extra=args.overrides,
              only=args.only)
    return 0


def _cmd_import_released(args: argparse.Namespace) -> int:
    from .models.released import import_released

    rep = import_released(args.src, args.dst, backbone=args.backbone, arch=args.arch)
    print(f"imported {rep.kind} {rep.backbone} from {rep.source} ({rep.tensors} tensors, sha256 {rep.sha256})")
    if rep.ignored:
        print(f"dropped the ImageNet classifier: {', '.join(rep.ignored)}")
    if rep.kind == "segmentor":
        print(f"wrote {args.dst}: {rep.build_args['arch']}-{rep.backbone}, {rep.build_args['num_classes']} classes, "
              f"head width {rep.build_args['head_width']}, aux {rep.build_args['aux']}; use it as teacher.checkpoint={args.dst}")
    else:
        print(f"wrote {args.dst}: use it as student.pretrained={args.dst} (inputs become BGR 0-255 minus the Caffe mean)")
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 1024x2048, not {text!r}") from None
    return h, w


def _cmd_models(args: argparse.Namespace) -> int:
    from .harness.models_table import models_frame, render_models

    frame = models_frame(size=args.size)
    if args.format == "json":
        print(frame.to_json(orient="records", indent=2))
    else:
        render_models(frame)
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .data.check import check_dataset

    console = Console()
    report = check_dataset(args.name, args.root, args.split, decode=not args.no_decode, workers=args.workers)
    table = Table(title=f"{report.name} at {report.root}")
    for col in ("split", "expected", "images", "labels", "problems"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for s in report.splits:
        style = "" if s.count_ok else "red"
        table.add_row(s.split, str(s.expected), f"[{style}]{s.images}[/]" if style else str(s.images),
                      f"[{style}]{s.labels}[/]" if style else str(s.labels), str(len(s.problems)))
    console.print(table)
    problems = [p for s in report.splits for p in s.problems]
    for line in problems[: args.max_problems]:
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if len(problems) > args.max_problems:
        console.print(f"  ... and {len(problems) - args.max_problems} more (--max-problems)")
    for s in report.splits:
        if not s.count_ok:
            note = " (not counted as a fault: --ignore-counts)" if args.ignore_counts else ""
            console.print(f"{s.split}: expected {s.expected} images with labels, found {s.images} images and {s.labels} labels{note}",
                          soft_wrap=True)
    ok = report.ok(check_counts=not args.ignore_counts)
    console.print("[green]OK[/]" if ok else "[red]FAULTS FOUND[/]")
    return 0 if ok else 1


def _cmd_plot(args: argparse.Namespace) -> int:
    from .harness.plots import plot_results

    paths = plot_results(args.results_dir, args.out)
    if not paths:
        print(f"afdcd-bench: no run records with validation history under {args.results_dir}", file=sys.stderr)
        return 1
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afdcd-bench", description="Af-DCD reproduction and benchmark suite")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one recipe (use through `accelerate launch` for several processes)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="dotted.key=value")
    t.add_argument("--results-dir", default="results/adhoc")
    t.add_argument("--per-device-batch", type=int, default=None, help="accumulate gradients to keep the recipe's effective batch")
    t.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's validation split")
    e.add_argument("recipe")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write raw, colour and (Cityscapes) labelIds PNG predictions under DIR")
    e.set_defaults(func=_cmd_eval)

    tb = sub.add_parser("table", help="gather run records into tables")
    tb.add_argument("results_dir", nargs="?", default="results")
    tb.set_defaults(func=_cmd_table)

    pl = sub.add_parser("plot", help="PNG figures: per-class IoU change over the baseline, validation curves")
    pl.add_argument("results_dir", nargs="?", default="results")
    pl.add_argument("--out", default=None, help="folder for the figures (default RESULTS_DIR/figures)")
    pl.set_defaults(func=_cmd_plot)

    r = sub.add_parser("recipes", help="list the recipes")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.set_defaults(func=_cmd_recipes)

    rp = sub.add_parser("reproduce", help="teacher, baselines, distilled students, table")
    rp.add_argument("benchmark")
    rp.add_argument("overrides", nargs="*", help="dotted.key=value applied to every run")
    rp.add_argument("--seeds", type=int, default=3)
    rp.add_argument("--data-root", default=None, help="the benchmark's folder (default $AFDCD_DATA/<folder>)")
    rp.add_argument("--teacher", default=None, help="a teacher checkpoint to use instead of training one")
    rp.add_argument("--quick", action="store_true", help="one seed, tiny schedule (smoke run)")
    rp.add_argument("--results-dir", default=None)
    rp.add_argument("--output-dir", default="runs")
    rp.add_argument("--launcher", choices=("inprocess", "accelerate"), default=None)
    rp.add_argument("--only", default=None, help="the teacher and only the student recipes whose name contains this")
    rp.set_defaults(func=_cmd_reproduce)
    ir = sub.add_parser("import-released", help="convert a released backbone or teacher/student .pth into our checkpoint format")
    ir.add_argument("src")
    ir.add_argument("dst", help="output .safetensors (a .json of build arguments is written beside it)")
    ir.add_argument("--backbone", default=None, help="backbone name, when it cannot be told from the keys")
    ir.add_argument("--arch", choices=("deeplabv3", "pspnet"), default=None)
    ir.set_defaults(func=_cmd_import_released)

    m = sub.add_parser("models", help="params and multiply-adds of every teacher and student the recipes use")
    m.add_argument("--size", type=_parse_size, default=None, help="HxW for every model (default: each benchmark's crop)")
    m.add_argument("--format", choices=("text", "json"), default="text")
    m.set_defaults(func=_cmd_models)
    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="count, pair and decode every file of a dataset folder; exit 1 on any fault")
    dc.add_argument("name", help="cityscapes, voc, camvid, ade20k, coco_stuff_164k or digits")
    dc.add_argument("--root", default=None, help="the benchmark's folder (default $AFDCD_DATA/<folder>)")
    dc.add_argument("--split", action="append", default=None, help="check only this split (repeatable)")
    dc.add_argument("--no-decode", action="store_true", help="only count and pair files, do not open them")
    dc.add_argument("--ignore-counts", action="store_true", help="split sizes other than the published ones are not a fault")
    dc.add_argument("--workers", type=int, default=None)
    dc.add_argument("--max-problems", type=int, default=50)
    dc.set_defaults(func=_cmd_data_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .config import ConfigError
    from .data import DatasetLayoutError
    from .engine.trainer import LaunchMismatch, TrainingDiverged
    from .harness.reproduce import ReproduceError
    from .models import PretrainedWeightsError
    from .models.weights import WeightsMismatch

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # dotted.key=value overrides may come after options too (argparse stops collecting them there)
    if unknown:
        if hasattr(args, "overrides") and all("=" in u and not u.startswith("-") for u in unknown):
            args.overrides = [*(args.overrides or []), *unknown]
        else:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except (ConfigError, DatasetLayoutError, ReproduceError, PretrainedWeightsError, WeightsMismatch, LaunchMismatch,
            TrainingDiverged, FileNotFoundError, ValueError) as exc:
        print(f"afdcd-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
