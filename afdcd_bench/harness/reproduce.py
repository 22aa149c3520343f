"""`reproduce.sh BENCHMARK`: teacher, then baselines and distilled students, then the table.

Runs whose record already exists are skipped, so an interrupted reproduction continues
where it stopped (and each run itself resumes from its last checkpoint).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console

from ..config import is_teacher_recipe, list_recipes, load_recipe, recipes_root
from ..data import BENCHMARKS, DatasetLayoutError, build_dataset, describe, resolve_root
from ..engine.records import record_path
from .table import expected_runs, records_frame, render, summary, write_tables

STUDENT_METHODS = ("baseline", "kd", "afdcd")


class ReproduceError(RuntimeError):
    pass


def plan(benchmark: str) -> list[str]:
    """Recipe names in run order: the teacher first, then each student's methods."""
    runnable = list_recipes(benchmark)
    if not runnable:
        raise ReproduceError(f"no recipes for {benchmark!r} under {recipes_root() / benchmark}")
    order = {m: i for i, m in enumerate(STUDENT_METHODS)}
    teachers = [n for n in runnable if is_teacher_recipe(n)]
    students = sorted((n for n in runnable if n not in teachers), key=lambda n: (order.get(load_recipe(n).method.name, 9), n))
    return teachers + students


def check_data(benchmark: str, data_root: str | None) -> None:
    """data_root is the benchmark's own folder (default: $AFDCD_DATA/<folder>)."""
    if benchmark not in BENCHMARKS:
        return
    root = resolve_root(benchmark, data_root)
    try:
        build_dataset(benchmark, root, "train")
    except DatasetLayoutError as exc:
        raise ReproduceError(str(exc)) from None
    except FileNotFoundError as exc:
        raise ReproduceError(f"{benchmark}: {exc}\n{describe(benchmark)}") from None


def run_one(name: str, overrides: list[str], results_dir: Path, launcher: str, console: Console) -> None:
    if launcher == "inprocess":
        from accelerate.state import AcceleratorState

        from ..engine import train

        cfg = load_recipe(name, overrides)
        train(cfg, results_dir=results_dir)
        AcceleratorState._reset_state(reset_partial_state=True)
        return
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "-m", "afdcd_bench",
           "train", name, "--results-dir", str(results_dir), *overrides]
    console.log("$ " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise ReproduceError(f"run {name} failed (command above)")


def reproduce(
    benchmark: str,
    seeds: int = 1,
    data_root: str | None = None,
    teacher: str | None = None,
    quick: bool = False,
    results_dir: str | None = None,
    output_dir: str = "runs",
    launcher: str | None = None,
    extra: list[str] | None = None,
    console: Console | None = None,
    only: str | None = None,
) -> Path:
    """only: keep the teacher and the student recipes whose name contains this text."""
    console = console or Console(width=max(Console().width, 150))
    if benchmark != "demo" and benchmark not in BENCHMARKS:
        raise ReproduceError(f"unknown benchmark {benchmark!r}; expected demo or one of {sorted(BENCHMARKS)}")
    check_data(benchmark, data_root)
    names = plan(benchmark)
    if only:
        names = [n for n in names if is_teacher_recipe(n) or only in n]
        if len(names) <= 1:
            raise ReproduceError(f"--only {only!r} matches no student recipe of {benchmark}: {plan(benchmark)}")
    quick_overrides: dict[str, list[str]] = {}
    quick_file = recipes_root() / benchmark / "_quick.yaml"
    if quick:
        if not quick_file.is_file():
            raise ReproduceError(f"--quick needs {quick_file}")
        quick_overrides = yaml.safe_load(quick_file.read_text()) or {}
        seeds = 1
    out = Path(results_dir or f"results/{benchmark}{'-quick' if quick else ''}")
    launcher = launcher or ("inprocess" if benchmark == "demo" else "accelerate")
    common = [f"output_dir={output_dir}", *(extra or [])]
    if data_root:
        common.append(f"data.root={data_root}")
    teacher_ckpt = teacher
    for name in names:
        is_teacher = is_teacher_recipe(name)
        if is_teacher and teacher:
            console.log(f"using the given teacher {teacher}; {name} not trained")
            continue
        for seed in [0] if is_teacher else range(seeds):
            overrides = [*common, *quick_overrides.get(name, []), f"train.seed={seed}"]
            if not is_teacher:
                cfg_probe = load_recipe(name, overrides)
                if cfg_probe.teacher is not None:
                    ckpt = teacher_ckpt or str(Path(output_dir) / (cfg_probe.teacher.recipe or "") / "seed0" / "best.safetensors")
                    overrides.append(f"teacher.checkpoint={ckpt}")
            cfg = load_recipe(name, overrides)
            rec = record_path(out, cfg.name, seed)
            if rec.is_file():
                console.log(f"skip {name} seed {seed}: record {rec} exists")
                continue
            console.rule(f"{name} (seed {seed})")
            run_one(name, overrides, out, launcher, console)
    planned = {n: [*common, *quick_overrides.get(n, [])] for n in names if not (teacher and is_teacher_recipe(n))}
    table = summary(records_frame(out), expected_runs(planned))
    render(table, console)
    for p in write_tables(table, out):
        console.log(f"wrote {p}")
    return out
