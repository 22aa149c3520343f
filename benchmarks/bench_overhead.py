"""The training harness's own cost: median seconds per step of `afdcd_bench.engine.train` (Accelerate,
the finiteness check, term logging, progress, the lr schedule) against a bare PyTorch loop over the
same networks, method, optimiser and data loader, in one run. Steps are timed from one step's start
to the next (data loading included); validation and checkpoints fall outside the timed steps.

    python benchmarks/bench_overhead.py                                 # demo/kd, 30 steps
    python benchmarks/bench_overhead.py demo/afdcd --steps 40 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from afdcd_bench.config import load_recipe  # noqa: E402
from afdcd_bench.data.batches import model_inputs  # noqa: E402
from afdcd_bench.data import build_dataset, resolve_root  # noqa: E402
from afdcd_bench.engine import TrainHooks, train  # noqa: E402
from afdcd_bench.engine.schedule import poly_lr  # noqa: E402
from afdcd_bench.models import save_segmentor  # noqa: E402
from bench_step import build  # noqa: E402


def _settings(steps: int, tmp: Path, teacher: Path | None, extra: list[str]) -> list[str]:
    return ["student.pretrained=false", f"train.iterations={steps}", f"train.val_interval={steps}",
            f"train.checkpoint_interval={steps}", f"train.log_interval={steps}", "data.num_workers=0",
            "eval.teacher_check=false", "train.mixed_precision=no", f"output_dir={tmp / 'runs'}",
            *([f"teacher.checkpoint={teacher}"] if teacher else []), *extra]


def bare_loop(recipe: str, overrides: list[str], steps: int, tmp: Path) -> tuple[list[float], Path | None]:
    """Seconds of each step of a plain loop; also saves its (random) teacher for the harness run."""
    cfg = load_recipe(recipe, overrides)
    torch.manual_seed(0)
    cfg, student, teacher, method, optimizer, crop = build(recipe, overrides, torch.device("cpu"),
                                                           cfg.train.effective_batch, None, tmp)
    teacher_path = None
    if teacher is not None:
        teacher_path = tmp / "teacher.safetensors"
        save_segmentor(teacher, teacher_path)
    ds = build_dataset(cfg.data.name, resolve_root(cfg.data.name, cfg.data.root), "train", train=True, crop_size=crop,
                       scale_range=tuple(cfg.data.scale_range),
                       seed=cfg.train.seed, flip=cfg.data.flip, scale_step=cfg.data.scale_step)
    loader = DataLoader(ds, batch_size=cfg.train.effective_batch, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    marks = []
    student.train()
    step = 0
    while step < steps:
        for batch in loader:
            marks.append(time.perf_counter())
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(cfg.train.lr, step, steps, cfg.train.poly_power, cfg.train.lr_floor)
            teacher_out = None
            images, labels = model_inputs(batch, student.build_args["normalization"])
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher(images)
            loss = sum(method(student(images), teacher_out, labels).values())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step()
            step += 1
            if step >= steps:
                break
    return [b - a for a, b in zip(marks, marks[1:])], teacher_path


def harness(recipe: str, overrides: list[str], steps: int) -> list[float]:
    marks: list[float] = []
    cfg = load_recipe(recipe, overrides)
    train(cfg, show_progress=False, hooks=TrainHooks(before_update=lambda micro: marks.append(time.perf_counter())))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return [b - a for a, b in zip(marks, marks[1:])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", nargs="?", default="demo/kd")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the medians")
    p.add_argument("--rounds", type=int, default=2, help="bare loop and harness, alternated, this many times")
    p.add_argument("--json", default=None)
    a = p.parse_intermixed_args(argv)
    if a.steps < a.warmup + 3:
        raise SystemExit(f"--steps must be at least --warmup + 3 ({a.warmup + 3})")
    bare, loop = [], []
    for r in range(a.rounds):  # alternated, so that a drift of the machine's speed hits both
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            times, teacher = bare_loop(a.recipe, _settings(a.steps, tmp, None, a.overrides), a.steps, tmp)
            bare += times[a.warmup:]
            loop += harness(a.recipe, _settings(a.steps, tmp, teacher, a.overrides), a.steps)[a.warmup:]
    bare_s, loop_s = statistics.median(bare), statistics.median(loop)
    result = {"recipe": a.recipe, "steps": a.steps, "warmup": a.warmup, "rounds": a.rounds, "bare_seconds_per_step": bare_s,
              "harness_seconds_per_step": loop_s, "overhead": loop_s / bare_s - 1, "torch": torch.__version__}
    print(f"{a.recipe}: bare loop {1000 * bare_s:.1f} ms/step, harness {1000 * loop_s:.1f} ms/step: "
          f"overhead {100 * result['overhead']:+.1f}% (medians of {len(bare)} and {len(loop)} steps, {a.rounds} alternated rounds)")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
