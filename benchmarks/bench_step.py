"""Where a distillation step's time goes: median milliseconds of each part of a training step of a
recipe (data transfer, teacher forward, student forward, method losses, backward, optimiser step),
images/s and peak memory, on synthetic data at the recipe's shape. A bare PyTorch loop over the
recipe's own networks, method and optimiser (no Accelerate, no loader); the networks start from
random weights (the timings do not depend on them).

    python benchmarks/bench_step.py cityscapes/deeplabv3_resnet18/afdcd --device cuda           # the paper's shape
    python benchmarks/bench_step.py demo/kd --batch 4 --crop 64x64 --json out.json              # CPU, small
    python benchmarks/bench_step.py RECIPE --precision fp32 method.afdcd.backend=compiled        # recipe overrides

On CUDA each part is bracketed by synchronisations (they cost a little throughput, and tell where
it goes); `total` is the sum of the parts. Peak memory: the allocator's peak on CUDA, the process's
peak resident size on CPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from afdcd_bench.config import load_recipe  # noqa: E402
from afdcd_bench.engine.building import build_optimizer, speed_layout  # noqa: E402
from afdcd_bench.engine.stepping import input_layout, teacher_forward  # noqa: E402
from afdcd_bench.methods import BuildContext, build_method, needs_teacher, stage_of  # noqa: E402
from afdcd_bench.models import build_segmentor  # noqa: E402

PARTS = ("transfer", "teacher_forward", "student_forward", "method_losses", "backward", "optimizer_step")


def _parse_crop(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _random_tokens(num_classes: int, folder: Path) -> str:
    from safetensors.torch import save_file

    path = folder / "tokens.safetensors"
    save_file({"tokens": torch.randn(8, num_classes) * 0.01}, str(path))
    return str(path)


def build(recipe: str, overrides: list[str], device: torch.device, batch: int, crop: tuple[int, int] | None, tmp: Path):
    cfg = load_recipe(recipe, ["student.pretrained=false", *overrides])
    if stage_of(cfg.method.name):
        raise SystemExit(f"{recipe} is a stage learnt on the teacher alone; time its students' recipes instead")
    if "maskd" in cfg.method.components and not Path(cfg.method.maskd.stage_weights or "").is_file():
        cfg = load_recipe(recipe, ["student.pretrained=false", *overrides,
                                   f"method.maskd.stage_weights={_random_tokens(cfg.num_classes, tmp)}"])
    s, t = cfg.student, cfg.teacher
    student = build_segmentor(s.arch, s.backbone, cfg.num_classes, False, s.aux, s.head_width).to(device)
    teacher = None
    if needs_teacher(cfg.method.name):
        teacher = build_segmentor(t.arch, t.backbone, cfg.num_classes, False, t.aux, t.head_width)
        teacher = teacher.to(device).eval().requires_grad_(False)
    crop = crop or tuple(cfg.data.crop_size)
    method = build_method(cfg.method, BuildContext(
        student=student.output_channels, teacher=teacher.output_channels if teacher is not None else None,
        num_classes=cfg.num_classes, crop_size=crop, device=device, per_device_batch=batch, seed=0)).to(device)
    for part in method.own_parts().values():
        part.module.to(device)
        part.optimizer = part.make_optimizer([p for p in part.module.parameters() if p.requires_grad])
    speed_layout(cfg.train, student, teacher, method, *(part.module for part in method.own_parts().values()))
    params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]
    return cfg, student, teacher, method, build_optimizer(params, cfg.train), crop


def run(recipe: str, overrides: list[str], device: str, batch: int, crop: tuple[int, int] | None, precision: str | None,
        warmup: int, steps: int) -> dict:
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, student, teacher, method, optimizer, crop = build(recipe, overrides, dev, batch, crop, Path(tmp))
    precision = precision or ("bf16" if dev.type == "cuda" and cfg.train.mixed_precision == "bf16" else "fp32")
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *crop, generator=gen)
    labels = torch.randint(0, cfg.num_classes, (batch, *crop), generator=gen)
    images = input_layout(images, cfg.train)
    if dev.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
        torch.cuda.reset_peak_memory_stats(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times: dict[str, list[float]] = {p: [] for p in PARTS}
    student.train()
    method.train()
    for i in range(warmup + steps):
        marks = [time.perf_counter()]
        x, y = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        sync()
        marks.append(time.perf_counter())
        teacher_out = None
        if teacher is not None:
            teacher_out = teacher_forward(teacher, x, cfg.train, autocast)
        sync()
        marks.append(time.perf_counter())
        with autocast():
            student_out = student(x)
        sync()
        marks.append(time.perf_counter())
        with autocast():
            terms = method(student_out, teacher_out, y)
            loss = sum(terms.values())
        sync()
        marks.append(time.perf_counter())
        loss.backward()
        sync()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step()
        sync()
        marks.append(time.perf_counter())
        if i >= warmup:
            for name, a, b in zip(PARTS, marks, marks[1:]):
                times[name].append(1000 * (b - a))
    parts = {k: statistics.median(v) for k, v in times.items()}
    total = sum(parts.values())
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return {"recipe": cfg.name, "method": cfg.method.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "batch": batch, "crop": list(crop), "precision": precision, "warmup": warmup, "steps": steps,
            "channels_last": cfg.train.channels_last, "optimizer_kernel": cfg.train.optimizer_kernel,
            "cudnn_benchmark": cfg.train.cudnn_benchmark,
            "parts_ms": parts, "total_ms": total, "images_per_second": 1000 * batch / total, "peak_memory_mb": peak,
            "torch": torch.__version__}


def precision_curves(recipe: str, overrides: list[str], device: str, batch: int, crop: tuple[int, int] | None,
                     steps: int) -> dict:
    """The same `steps` training steps (same initial weights, same synthetic batches) in fp32 and in
    bf16 autocast: both loss curves and how far apart they are."""
    dev = torch.device(device)
    curves = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            cfg, student, teacher, method, optimizer, crop_used = build(recipe, overrides, dev, batch, crop, Path(tmp))
        autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
        gen = torch.Generator().manual_seed(1)
        losses = []
        student.train()
        for _ in range(steps):
            x = input_layout(torch.randn(batch, 3, *crop_used, generator=gen).to(dev), cfg.train)
            y = torch.randint(0, cfg.num_classes, (batch, *crop_used), generator=gen).to(dev)
            teacher_out = None
            if teacher is not None:
                with torch.no_grad(), autocast():
                    teacher_out = teacher(x)
            with autocast():
                loss = sum(method(student(x), teacher_out, y).values())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step()
            losses.append(float(loss.detach()))
        curves[precision] = losses
    diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(curves["fp32"], curves["bf16"])]
    return {"recipe": recipe, "steps": steps, "batch": batch, "fp32": curves["fp32"], "bf16": curves["bf16"],
            "max_relative_difference": max(diffs), "mean_relative_difference": sum(diffs) / len(diffs)}


def render(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['recipe']} ({result['method']}): batch {result['batch']} at {result['crop'][0]}x"
                        f"{result['crop'][1]}, {result['precision']}, {result['device']}, median of {result['steps']} steps")
    table.add_column("part")
    table.add_column("ms", justify="right")
    table.add_column("share", justify="right")
    for k, v in result["parts_ms"].items():
        table.add_row(k, f"{v:.1f}", f"{100 * v / result['total_ms']:.0f}%")
    table.add_row("total", f"{result['total_ms']:.1f}", "100%")
    Console().print(table)
    Console().print(f"{result['images_per_second']:.2f} images/s, peak memory {result['peak_memory_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="recipe keys, dotted.key=value")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's effective batch)")
    p.add_argument("--crop", type=_parse_crop, default=None, help="HxW (default: the recipe's crop)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="default: the recipe's on CUDA, fp32 on CPU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compare-precision", type=int, default=0, metavar="STEPS",
                   help="instead: this many steps in fp32 and in bf16 on the same batches, both loss curves")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_intermixed_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    batch = a.batch or load_recipe(a.recipe, ["student.pretrained=false", *a.overrides]).train.effective_batch
    if a.compare_precision:
        result = precision_curves(a.recipe, a.overrides, a.device, batch, a.crop, a.compare_precision)
        print(f"bf16 vs fp32 over {a.compare_precision} steps: mean relative loss difference "
              f"{result['mean_relative_difference']:.4f}, max {result['max_relative_difference']:.4f}")
    else:
        result = run(a.recipe, a.overrides, a.device, batch, a.crop, a.precision, a.warmup, a.steps)
        render(result)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
