"""Median milliseconds of each part of a training step of a recipe, on synthetic data at the recipe's
shape: what `benchmarks/bench_step.py` prints and what an equal-compute reproduction gives each run
its iterations by (harness/budget.py). A bare PyTorch loop over the recipe's own networks, method and
optimiser (no Accelerate, no loader); the networks start from random weights (the timings do not
depend on them). On CUDA each part is bracketed by synchronisations; `total_ms` is the parts' sum.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..config import load_recipe
from ..engine.building import build_optimizer, speed_layout
from ..engine.stepping import input_layout, teacher_forward
from ..methods import BuildContext, build_method, needs_teacher, stage_of
from ..models import build_segmentor

PARTS = ("transfer", "teacher_forward", "student_forward", "method_losses", "backward", "optimizer_step")


def _random_tokens(num_classes: int, folder: Path) -> str:
    from safetensors.torch import save_file

    path = folder / "tokens.safetensors"
    save_file({"tokens": torch.randn(8, num_classes) * 0.01}, str(path))
    return str(path)


def build(recipe: str, overrides: list[str], device: torch.device, batch: int, crop: tuple[int, int] | None, tmp: Path) -> tuple:
    """The recipe's networks, method and optimiser on `device`, untrained (a MasKD run gets random tokens)."""
    cfg = load_recipe(recipe, ["student.pretrained=false", *overrides])
    if stage_of(cfg.method.name):
        raise ValueError(f"{recipe} is a stage learnt on the teacher alone; time its students' recipes instead")
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
        warmup: int, steps: int) -> dict[str, Any]:
    """`steps` timed training steps after `warmup` untimed ones: each part's median, their sum, images/s, peak memory."""
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
            "totals_ms": [sum(times[p][i] for p in PARTS) for i in range(steps)],  # each timed step, for the spread
            "torch": torch.__version__}
