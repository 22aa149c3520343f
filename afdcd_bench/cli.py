"""`afdcd-bench` subcommands: thin wrappers over the package."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rich.console import Console


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_recipe
    from .engine import train

    cfg = load_recipe(args.recipe, args.overrides)
    record = train(cfg, results_dir=args.results_dir, per_device_batch=args.per_device_batch, resume=not args.no_resume)
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
    scores = evaluate(model, loader, cfg.num_classes, acc, cfg.eval)
    if acc.is_main_process:
        print(json.dumps({"miou": scores["miou"], "pixel_acc": scores["pixel_acc"], "iou": scores["iou"]}, indent=2))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .harness.table import records_frame, render, summary, write_tables

    table = summary(records_frame(args.results_dir))
    render(table)
    if not table.empty:
        write_tables(table, args.results_dir)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .config import load_recipe, recipes_root, to_dict

    names = sorted(p.relative_to(recipes_root()).with_suffix("").as_posix() for p in recipes_root().rglob("*.yaml")
                   if "accelerate" not in p.parts and p.name not in ("base.yaml", "quick.yaml", "student.yaml"))
    if args.format == "json":
        print(json.dumps([to_dict(load_recipe(n)) for n in names], indent=2))
    else:
        for n in names:
            cfg = load_recipe(n)
            teacher = f" <- {cfg.teacher.arch}-{cfg.teacher.backbone}" if cfg.teacher and cfg.method.name != "baseline" else ""
            print(f"{n:40s} {cfg.benchmark:16s} {cfg.method.name:9s} {cfg.student.arch}-{cfg.student.backbone}{teacher}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .harness.reproduce import reproduce

    reproduce(args.benchmark, seeds=args.seeds, data_root=args.data_root, teacher=args.teacher, quick=args.quick,
              results_dir=args.results_dir, output_dir=args.output_dir, launcher=args.launcher, extra=args.overrides)
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
    e.set_defaults(func=_cmd_eval)

    tb = sub.add_parser("table", help="gather run records into tables")
    tb.add_argument("results_dir", nargs="?", default="results")
    tb.set_defaults(func=_cmd_table)

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
    rp.set_defaults(func=_cmd_reproduce)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .config import ConfigError
    from .data import DatasetLayoutError
    from .harness.reproduce import ReproduceError
    from .models import PretrainedWeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetLayoutError, ReproduceError, PretrainedWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"afdcd-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
