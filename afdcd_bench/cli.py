"""`afdcd-bench` subcommands: thin wrappers over the package."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from .console import say


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine import train

    cfg = _train_config(args)
    record = train(cfg, results_dir=args.results_dir, per_device_batch=args.per_device_batch, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0 and record.get("stage_of"):
        Console().print(f"{record['method']}: wrote {record['stage_weights']} (final " +
                        ", ".join(f"{k} {v:.4f}" for k, v in record["final_terms"].items()) + ")")
    elif int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        Console().print(f"final mIoU {100 * (record['final_miou'] or float('nan')):.2f}, best {100 * (record['best_miou'] or float('nan')):.2f}")
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    """The recipe a `train` command line names, with its overrides and --tracker."""
    from .config import load_recipe

    overrides = list(args.overrides)
    if args.tracker:
        overrides.append(f"train.trackers=[{', '.join(args.tracker)}]")
    return load_recipe(args.recipe, overrides)


def _cmd_launch(argv: list[str]) -> int:
    """`afdcd-bench launch [accelerate launch options] train RECIPE ...` (harness/launcher.py)."""
    from .config import budget_slug, run_dir
    from .harness.launcher import launch_log, run_launch

    if "train" not in argv or argv[0] in ("-h", "--help"):
        print("usage: afdcd-bench launch [accelerate launch options] train RECIPE [overrides] [train options]\n"
              "runs `accelerate launch OPTIONS -m afdcd_bench train ...`, its whole output kept in "
              "<run folder>.launch.log; a failure ends with one sentence", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    at = argv.index("train")
    options, train_argv = argv[:at], argv[at + 1:]
    args = _parse(build_parser(), ["train", *train_argv])  # the train command's own errors, before any process starts
    cfg = _train_config(args)
    folder = run_dir(cfg.output_dir, cfg.name, cfg.train.seed, budget_slug(cfg.budget))
    return run_launch(options, train_argv, launch_log(folder))


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
                       cache=cfg.data.cache, cache_dir=cfg.data.cache_dir)
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
    from .harness.released_scores import with_released
    from .harness.table import expected_runs, records_frame, render, summary, write_tables

    folder = Path(args.results_dir)
    if not folder.is_dir():
        what = "is a file, not a folder of run records" if folder.exists() else "does not exist"
        print(f"afdcd-bench: error: results folder {folder} {what}", file=sys.stderr)
        return 2
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"afdcd-bench: error: --out {args.out} is a file; give a folder (table.csv / .md / .tex go in it)", file=sys.stderr)
        return 2
    problems: list[str] = []
    frame = records_frame(folder, problems)
    for line in problems:
        print(f"afdcd-bench: warning: skipped {line}", file=sys.stderr)
    from .harness.reproduce import plan

    # the recipes of the benchmarks found, so runs not made yet show as missing (ablations only
    # where some ablation was run)
    with_ablations = bool(frame["ablation_of"].notna().any())
    protocols = tuple(sorted({"2023", *(_protocol(r) for r in set(frame["recipe"]))} - {None}))  # the tables some run is in
    expected: list = [n for b in sorted({r.split("/")[0] for r in frame["recipe"]}) if list_recipes(b)
                      for n in plan(b, ablations=with_ablations, protocols=protocols)]
    if (folder / "plan.json").is_file():  # a reproduction's folder: the runs it planned, not every recipe
        from .harness.plan import load_plan

        seen: dict[tuple, tuple[str, list[str]]] = {}
        for run in load_plan(folder).runs:
            seen.setdefault((run.recipe, run.budget), (run.recipe, [o for o in run.overrides if not o.startswith("train.seed=")]))
        expected = list(seen.values())
    table = with_released(summary(frame, expected_runs(expected)), folder)
    render(table)
    out = args.out or (folder if args.results_dir_given else None)
    if out is not None and not table.empty:
        for path in write_tables(table, out):
            print(f"wrote {path}")
    elif not table.empty:
        print("(printed only: name a results folder, or --out DIR, to write table.csv / .md / .tex)")
    return 1 if problems and table.empty else 0


def _network(cfg) -> str | None:
    """The network a recipe trains; None for a stage learnt on the teacher alone (MasKD's tokens)."""
    from .methods import stage_of

    return None if stage_of(cfg.method.name) else f"{cfg.student.arch}-{cfg.student.backbone}"


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .config import list_recipes, load_recipe, run_method, to_dict

    from .config.schema import ConfigError

    names = list_recipes()
    configs, broken = {}, {}
    for n in names:  # a broken recipe is listed with its reason; the others still are
        try:
            configs[n] = load_recipe(n)
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            broken[n] = one_line(exc)
    names = [n for n in names if n in configs]
    if args.format == "json":
        rows = []
        for n in names:
            cfg = configs[n]
            distilled = cfg.teacher is not None and cfg.method.name != "baseline"
            rows.append({"recipe": n, "benchmark": cfg.benchmark, "method": run_method(n, cfg.method.name),
                         "student": _network(cfg),
                         "teacher": f"{cfg.teacher.arch}-{cfg.teacher.backbone}" if distilled else None,
                         "published_miou": cfg.published.miou, "published_split": cfg.published.split if cfg.published.miou else None,
                         "protocol": cfg.protocol, "config": to_dict(cfg)})
        print(json.dumps(rows, indent=2))
    else:
        rows = []
        for n in names:
            cfg = configs[n]
            method = run_method(n, cfg.method.name)
            teacher = f"{cfg.teacher.arch}-{cfg.teacher.backbone}" if cfg.teacher and method not in ("baseline", "teacher") else ""
            published = "" if cfg.published.miou is None else f"{cfg.published.miou:.2f}" + (
                " (test server)" if cfg.published.split == "test-server" else " (test)" if cfg.published.split == "test" else "")
            rows.append((n, cfg.benchmark, cfg.protocol, method, _network(cfg) or "- (stage)", teacher, published))
        header = ("recipe", "benchmark", "protocol", "method", "network", "teacher", "published")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for n, why in broken.items():
        print(f"afdcd-bench: error: recipe {n} does not load: {why}", file=sys.stderr)
    return 1 if broken else 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .harness.reproduce import reproduce
    from .harness.slurm_options import slurm_options

    from .harness.reproduce import ReproduceError

    if args.quick and args.seeds not in (None, 1):
        raise ReproduceError(f"--quick trains one seed (a smoke run); drop --seeds {args.seeds}, or run without --quick")
    resources = {"gpus": args.gpus_per_run, "processes": args.processes_per_run, "nodes": args.nodes, "threads": args.threads}
    reproduce(args.benchmark, seeds=1 if args.quick else (args.seeds or 3), data_root=args.data_root, teacher=args.teacher, quick=args.quick,
              results_dir=args.results_dir, output_dir=args.output_dir, executor=args.executor, extra=args.overrides,
              only=args.only, ablations=args.ablations, protocol=args.protocol,
              methods=[m for m in (args.methods or "").split(",") if m] or None, resources=resources,
              parallel=args.parallel, dry_run=args.dry_run, step_times=args.step_times,
              slurm=slurm_options(args) if args.executor == "slurm" else None, wait=args.wait,
              equal_compute=args.equal_compute, schedule_scale=args.schedule_scale, costs=args.costs)
    return 0


def _protocol(recipe: str) -> str | None:
    """The protocol of a record's recipe, where the recipe still loads."""
    from .config import load_recipe
    from .config.schema import ConfigError

    try:
        return load_recipe(recipe).protocol
    except (ConfigError, ValueError, FileNotFoundError):
        return None


def _cmd_costs(args: argparse.Namespace) -> int:
    from .harness.reproduce import measure_benchmark_costs

    from .harness.reproduce import protocols_of

    path = measure_benchmark_costs(args.benchmark, Path(args.out), methods=[m for m in (args.methods or "").split(",") if m] or None,
                                   ablations=args.ablations, quick=args.quick, extra=args.overrides, protocols=protocols_of(args.protocol),
                                   processes=args.processes_per_run * args.nodes, steps=args.steps, threads=args.threads)
    print(f"wrote {path}: give it to `reproduce {args.benchmark} --equal-compute REF --costs {path}`")
    return 0


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    from .models.fetch import fetch, select

    entries = select(args.backbones, args.teachers or [], args.released or [])
    console = Console()
    fetch(entries, Path(args.root) if args.root else None, Path(args.from_dir) if args.from_dir else None, args.accept_changed,
          show_progress=sys.stderr.isatty(), log=console.log)
    return 0


def _cmd_score_released(args: argparse.Namespace) -> int:
    from .harness.released_scores import score_released

    from .config import project_root

    out = Path(args.results_dir).resolve() if args.results_dir else project_root() / "results" / args.benchmark
    paths = score_released(args.benchmark, out, args.data_root, args.keys, args.overrides, log=Console().log)
    print(f"wrote {len(paths)} record(s) under {out / 'released'}; `afdcd-bench table {out}` shows them beside the runs")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .harness.status import print_status

    return print_status(Path(args.results_dir), lines=args.lines)


def _cmd_import_released(args: argparse.Namespace) -> int:
    from .models.released import import_released

    rep = import_released(args.src, args.dst, backbone=args.backbone, arch=args.arch)
    print(f"imported {rep.kind} {rep.backbone} from {rep.source} ({rep.tensors} tensors, sha256 {rep.sha256})")
    if rep.ignored:
        print(f"dropped the ImageNet classification head ({len(rep.ignored)} tensors): {', '.join(rep.ignored)}")
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
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, e.g. 1024x2048, not {text!r}")
    return h, w


def _cmd_models(args: argparse.Namespace) -> int:
    from .harness.models_table import models_frame, render_models

    frame = models_frame(size=args.size)
    if args.format == "json":
        print(frame.to_json(orient="records", indent=2))
    else:
        render_models(frame)
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from .data import resolve_root
    from .data.prepare import PREPARATIONS, prepare

    console = Console()
    root = resolve_root(args.name, args.root)
    check = argparse.Namespace(name=args.name, root=str(root), split=None, no_decode=False, workers=None, max_problems=50,
                               ignore_counts=args.ignore_counts)
    checked: list[int] = []

    def data_check(_root: Path) -> bool:  # a new build is complete only once it passed this
        checked.append(_cmd_data_check(check))
        return checked[-1] == 0

    prepare(args.name, root, Path(args.from_dir) if args.from_dir else None, args.download_only,
            show_progress=sys.stderr.isatty(), log=console.log, check=data_check)
    if args.download_only:
        return 0
    console.print(f"{args.name}: {PREPARATIONS[args.name].terms}; using the data is accepting them.", soft_wrap=True)
    return checked[-1] if checked else _cmd_data_check(check)  # a build already there: checked again


def _cmd_data_cache(args: argparse.Namespace) -> int:
    from .data import BENCHMARKS, build_dataset, cache_folder, resolve_root
    from .data.cache import build_cache, bytes_needed

    if args.name not in BENCHMARKS:
        print(f"afdcd-bench: error: data cache {args.name}: a cache is for the benchmarks read from image files "
              f"({', '.join(sorted(BENCHMARKS))})", file=sys.stderr)
        return 2
    console = Console()
    root = resolve_root(args.name, args.root)
    for split in args.split or ["train"]:
        dataset = build_dataset(args.name, root, split, cache="off")
        folder = cache_folder(dataset.root, args.name, split, args.cache_dir)
        if args.size_only:  # from the images' headers: nothing decoded, nothing written
            free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
            console.print(f"{args.name} {split}: {len(dataset)} items, a cache of {bytes_needed(dataset) / 1e9:.2f} GB at "
                          f"{folder} ({free / 1e9:.2f} GB free there)")
            continue
        build_cache(dataset, folder, log=console.log)
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

    if not Path(args.results_dir).is_dir():
        what = "is a file, not a folder of run records" if Path(args.results_dir).exists() else "does not exist"
        print(f"afdcd-bench: error: results folder {args.results_dir} {what}", file=sys.stderr)
        return 2
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"afdcd-bench: error: --out {args.out} is a file; give a folder for the figures", file=sys.stderr)
        return 2
    problems: list[str] = []
    paths = plot_results(args.results_dir, args.out, qualitative=args.qualitative, problems=problems)
    for line in problems:
        print(f"afdcd-bench: warning: skipped {line}", file=sys.stderr)
    if not paths:
        print(f"afdcd-bench: no run records with validation history under {args.results_dir}", file=sys.stderr)
        return 1
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afdcd-bench", description="Af-DCD reproduction and benchmark suite")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one recipe (through `afdcd-bench launch` or `accelerate launch` for several processes)")
    t.add_argument("recipe", help="a recipe name (`afdcd-bench recipes` lists them) or a path to a .yaml")
    t.add_argument("overrides", nargs="*", help="dotted.key=value settings on top of the recipe, e.g. train.lr=0.01")
    t.add_argument("--results-dir", default="results/adhoc", help="folder for the run record (default results/adhoc)")
    t.add_argument("--per-device-batch", type=int, default=None, help="accumulate gradients to keep the recipe's effective batch")
    t.add_argument("--no-resume", action="store_true",
                   help="start over even if the run folder holds a stopped run (that run is moved aside, not deleted)")
    t.add_argument("--tracker", action="append", default=None, metavar="NAME",
                   help="log to an experiment tracker through Accelerate (tensorboard, wandb, mlflow, aim, comet_ml, ...); repeatable")
    t.set_defaults(func=_cmd_train)

    sub.add_parser("launch", help="`accelerate launch` of `train` with its whole output kept and a failure said in one "
                   "sentence: afdcd-bench launch [accelerate launch options] train RECIPE ...")

    e = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's validation split")
    e.add_argument("recipe", help="the recipe whose data and evaluation settings to use")
    e.add_argument("overrides", nargs="*", help="dotted.key=value settings on top of the recipe")
    e.add_argument("--checkpoint", required=True, help="a .safetensors written by a run (best or final) or by import-released")
    e.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write raw, colour and (Cityscapes) labelIds PNG predictions under DIR")
    e.set_defaults(func=_cmd_eval)

    tb = sub.add_parser("table", help="gather run records into tables")
    tb.add_argument("results_dir", nargs="?", default=None,
                    help="folder of run records (default results/: printed only, nothing written)")
    tb.add_argument("--out", default=None, help="write table.csv / .md / .tex here (default: the folder named)")
    tb.set_defaults(func=_cmd_table)

    pl = sub.add_parser("plot", help="PNG figures: per-class IoU change over the baseline, validation curves")
    pl.add_argument("results_dir", help="folder of run records, e.g. results/demo")
    pl.add_argument("--out", default=None, help="folder for the figures (default RESULTS_DIR/figures)")
    pl.add_argument("--qualitative", action="store_true",
                    help="also draw fixed validation images with the ground truth and each student's prediction")
    pl.set_defaults(func=_cmd_plot)

    r = sub.add_parser("recipes", help="list the recipes")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.set_defaults(func=_cmd_recipes)

    rp = sub.add_parser("reproduce", help="teacher, baselines, distilled students, table")
    rp.add_argument("benchmark", help="demo, cityscapes, voc, camvid, ade20k or coco_stuff_164k")
    rp.add_argument("overrides", nargs="*", help="dotted.key=value applied to every run")
    rp.add_argument("--seeds", type=int, default=None, help="seeds per student recipe (default 3; the teacher runs once)")
    rp.add_argument("--data-root", default=None, help="the benchmark's folder (default $AFDCD_DATA/<folder>)")
    rp.add_argument("--teacher", default=None, help="a teacher checkpoint to use instead of training one")
    rp.add_argument("--quick", action="store_true",
                    help="one seed, tiny schedule (smoke run); results in results/BENCHMARK-quick, runs in runs/quick")
    rp.add_argument("--results-dir", default=None, help="folder for records and tables (default results/BENCHMARK)")
    rp.add_argument("--output-dir", default=None, help="folder for run folders and checkpoints (default runs/ of the project)")
    rp.add_argument("--executor", choices=("inprocess", "local", "slurm"), default=None,
                    help="where runs start: in this process (the demo's default), on this node (the benchmarks' default: "
                         "every GPU busy, or --parallel CPU runs), or SLURM jobs through submitit (docs/scale.md)")
    rp.add_argument("--gpus-per-run", type=int, default=None,
                    help="GPUs (one process each) per run and node (default 1 on a GPU node; 8 = one data-parallel run over the node)")
    rp.add_argument("--processes-per-run", type=int, default=None, help="processes per run and node (default: --gpus-per-run, or 1)")
    rp.add_argument("--nodes", type=int, default=1, help="nodes per run (slurm executor)")
    rp.add_argument("--parallel", type=int, default=1, help="CPU runs at once on a node without GPUs (local executor)")
    rp.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: the node's CPUs shared out)")
    rp.add_argument("--dry-run", action="store_true", help="print the plan (runs, dependencies, resources, projected hours); start nothing")
    rp.add_argument("--step-times", action="append", default=None, metavar="PATH",
                    help="bench_step JSON or a folder of records to project hours from (--dry-run; default results/gpu/*.json)")
    rp.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print the table (default: submit and return)")
    from .harness.slurm_options import add_slurm_arguments

    add_slurm_arguments(rp)
    rp.add_argument("--only", default=None, help="the student recipes of the folder of this name (else: whose name contains "
                    "this), with their baselines and teacher (of any protocol unless --protocol)")
    rp.add_argument("--protocol", default=None, choices=["2023", "2025", "all"],
                    help="the table to run: 2023 (Af-DCD's CNN students, the default), 2025 (CIRKDv2's students, SegFormer) or all")
    rp.add_argument("--methods", default=None, metavar="M1,M2",
                    help="only these methods' recipes (a method of method.name, e.g. cwd, or a recipe's file name, e.g. "
                         "dist_authors_schedule), with the teacher and the baselines")
    rp.add_argument("--ablations", action="store_true",
                    help="also run the variants and ablations of a main recipe (e.g. cityscapes: projector/mask readings, "
                         "FD or contrast only, spatial/channel contrasting, L2)")
    rp.add_argument("--equal-compute", default=None, metavar="REF",
                    help="give every student run the training cost of REF's run (a method or recipe file name, e.g. afdcd): "
                         "its iterations become REF's x REF's cost per step / its own (docs/equal_compute.md)")
    rp.add_argument("--schedule-scale", type=float, default=1.0, metavar="K",
                    help="K x every student recipe's iterations (with --equal-compute: K x REF's budget)")
    rp.add_argument("--costs", default=None, metavar="FILE",
                    help="costs per step from this JSON (`afdcd-bench costs`) instead of measuring them here")
    rp.set_defaults(func=_cmd_reproduce)

    co = sub.add_parser("costs", help="measure the cost of a training step of a benchmark's student recipes (for --equal-compute)")
    co.add_argument("benchmark", help="demo, cityscapes, voc, camvid, ade20k or coco_stuff_164k")
    co.add_argument("overrides", nargs="*", help="dotted.key=value applied to every recipe (as given to reproduce)")
    co.add_argument("--out", default="costs.json", help="the JSON to write (default costs.json)")
    co.add_argument("--methods", default=None, metavar="M1,M2", help="only these methods' recipes, with the baselines")
    co.add_argument("--ablations", action="store_true", help="also the ablation recipes")
    co.add_argument("--protocol", default=None, choices=["2023", "2025", "all"], help="the table whose recipes to measure (default 2023)")
    co.add_argument("--quick", action="store_true", help="at the --quick reproduction's shapes")
    co.add_argument("--processes-per-run", type=int, default=1, help="processes per run and node the runs will use (sets the batch measured)")
    co.add_argument("--nodes", type=int, default=1, help="nodes per run")
    co.add_argument("--steps", type=int, default=10, help="timed steps per recipe and round (3 interleaved rounds, after 3 untimed)")
    co.add_argument("--threads", type=int, default=None, help="CPU threads per process, as the runs will have them (a CPU "
                    "machine: reproduce's local executor gives each run cores / (--parallel x processes) unless --threads)")
    co.set_defaults(func=_cmd_costs)
    st = sub.add_parser("status", help="each planned run of a reproduction: done, running (step, ETA), queued, failed, not started")
    st.add_argument("results_dir", help="the reproduction's results folder, e.g. results/cityscapes")
    st.add_argument("--lines", type=int, default=5, help="last log lines shown for a failed run")
    st.set_defaults(func=_cmd_status)
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
    sr = sub.add_parser("score-released", help="evaluate the released teachers and Af-DCD students with this suite's protocol")
    sr.add_argument("benchmark", help="cityscapes, voc, camvid, ade20k or coco_stuff_164k")
    sr.add_argument("overrides", nargs="*", help="dotted.key=value applied to each recipe (e.g. eval.batch_size=4)")
    sr.add_argument("--data-root", default=None, help="the benchmark's folder (default $AFDCD_DATA/<folder>)")
    sr.add_argument("--results-dir", default=None, help="where the records go, under released/ (default results/BENCHMARK)")
    sr.add_argument("--keys", nargs="+", default=None, help="only these released files (e.g. cityscapes-teacher)")
    sr.set_defaults(func=_cmd_score_released)
    w = sub.add_parser("weights", help="the authors' released weights")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wf = wsub.add_parser("fetch", help="download (gdown), record, and import the released backbones, teachers, students")
    wf.add_argument("--backbones", action="store_true", help="the ImageNet backbones (the default when nothing else is named)")
    wf.add_argument("--teachers", nargs="+", metavar="BENCH", help="the released teachers of these benchmarks (or all)")
    wf.add_argument("--released", nargs="+", metavar="BENCH", help="Af-DCD's released students of these benchmarks (or all)")
    wf.add_argument("--from", dest="from_dir", default=None, metavar="DIR", help="take the files from this folder instead of downloading")
    wf.add_argument("--accept-changed", action="store_true", help="take a file whose sha256 differs from the one first recorded")
    wf.add_argument("--root", default=None, help="the weights folder (default weights/ of the project, or $AFDCD_WEIGHTS)")
    wf.set_defaults(func=_cmd_weights_fetch)
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
    dk = dsub.add_parser("cache", help="decode a benchmark's images and labels once into a cache that training reads without "
                         "decoding (resumable; a changed source is never served from it)")
    dk.add_argument("name", help="cityscapes, voc, camvid, ade20k or coco_stuff_164k")
    dk.add_argument("--root", default=None, help="the benchmark's folder (default $AFDCD_DATA/<folder>)")
    dk.add_argument("--split", action="append", default=None, help="cache this split (repeatable; default train)")
    dk.add_argument("--cache-dir", default=None, help="where (default <root>/.afdcd-cache, or $AFDCD_DATA_CACHE); a recipe "
                    "reads it with data.cache_dir=THE SAME")
    dk.add_argument("--size-only", action="store_true", help="say the space the cache needs (from the images' headers) "
                    "and what is free; write nothing")
    dk.set_defaults(func=_cmd_data_cache)
    dp = dsub.add_parser("prepare", help="download (or take from --from), verify, extract and convert a benchmark, then check it")
    dp.add_argument("name", help="cityscapes, voc, camvid, ade20k or coco_stuff_164k")
    dp.add_argument("--root", default=None, help="the benchmark's folder (default $AFDCD_DATA/<folder>)")
    dp.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                    help="take the archives from this folder (checked the same way) instead of downloading them")
    dp.add_argument("--download-only", action="store_true", help="fetch and verify the archives only (for a machine without network)")
    dp.add_argument("--ignore-counts", action="store_true", help="split sizes other than the published ones are not a fault")
    dp.set_defaults(func=_cmd_data_prepare)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message meant for the user. Imported only once one was raised, so
    that `--help` and light commands do not pay for torch and Accelerate."""
    from .config import ConfigError
    from .data import CacheError, DatasetLayoutError
    from .data.download import DownloadError
    from .data.prepare import PrepareError
    from .models.fetch import FetchError
    from .engine.checkpointing import DiskFull
    from .engine.collectives import CollectiveTimeout
    from .engine.records import RecordError
    from .engine.run_folder import RunFolderError
    from .engine import LaunchMismatch, TrainingDiverged
    from .harness.execution import RunsFailed
    from .harness.reproduce import ReproduceError
    from .models import PretrainedWeightsError
    from .models.weights import WeightsMismatch

    return (ConfigError, DatasetLayoutError, RecordError, RunFolderError, ReproduceError, PretrainedWeightsError, WeightsMismatch,
            LaunchMismatch, TrainingDiverged, RunsFailed, FileNotFoundError, PermissionError, ValueError, DownloadError,
            PrepareError, FetchError, DiskFull, CollectiveTimeout, CacheError)


def one_line(exc: BaseException) -> str:
    """The user's sentence of an error. A loader worker's error arrives wrapped in its whole
    traceback text; its last line is the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:  # its options are accelerate's: not parsed here
        return _guarded(lambda: _cmd_launch(argv[1:]))
    args = _parse(build_parser(), argv)
    if args.command == "train":
        from .engine.stopping import catch_early, end_with_parent

        catch_early()
        if os.environ.get("AFDCD_EXECUTOR") == "local":  # the launcher above it dies with reproduce: stop, saving
            end_with_parent()
    if args.command == "table":
        args.results_dir_given = args.results_dir is not None
        args.results_dir = args.results_dir or "results"
    return _guarded(lambda: args.func(args))


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(argv)
    # dotted.key=value overrides may come after options too (argparse stops collecting them there)
    if unknown:
        if hasattr(args, "overrides") and all("=" in u and not u.startswith("-") for u in unknown):
            args.overrides = [*(args.overrides or []), *unknown]
        else:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _guarded(command: Callable[[], int]) -> int:
    """A command's exit status, a user error's one sentence (status 2) instead of a traceback."""
    try:
        return command()
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        say(f"afdcd-bench: {exc or 'interrupted'}")
        return 130
    except Exception as exc:
        from .engine.stopping import EXIT_PREEMPTED, TrainingPreempted

        if isinstance(exc, TrainingPreempted):  # saved on a stop signal: not an error, and the scheduler may requeue it
            if int(os.environ.get("RANK", "0")) == 0:
                say(f"afdcd-bench: {exc}")
            return EXIT_PREEMPTED
        if not isinstance(exc, _user_errors()):
            raise
        say(f"afdcd-bench: error: {one_line(exc)}")  # every process of a launch says it: one write each
        return 2


if __name__ == "__main__":
    sys.exit(main())
