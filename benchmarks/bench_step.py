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
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from afdcd_bench.config import load_recipe  # noqa: E402
from afdcd_bench.engine.stepping import input_layout  # noqa: E402
from afdcd_bench.harness.step_cost import build, run  # noqa: E402  (bench_overhead imports build from here)


def _parse_crop(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


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
