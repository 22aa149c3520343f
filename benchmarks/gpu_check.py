"""The one-command GPU check (scripts/gpu_check.sh): the tests marked `gpu`, the step timing of the
Cityscapes DeepLabV3-R101 -> R18 baseline, KD and Af-DCD at the paper's shape with the projected
hours of the 40k-iteration recipe (and Af-DCD with each speed switch: the compiled contrastive
backend's eager twin, NCHW instead of the recipes' NHWC, fused SGD, the compiled projector), the
SegFormer-B4 teacher's step and a B4 -> B0 KD step at one 1024x1024 crop (the 2025 protocol), and
50 steps of bf16 against fp32. Writes one JSON under
results/gpu/ and prints a summary. Nothing downloads; the networks start from random weights.

    scripts/gpu_check.sh            # on the GPU machine (about 4-8 minutes on one H100)
    scripts/gpu_check.sh --cpu      # the same chain on the CPU at tiny shapes (the test suite runs it)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "benchmarks" / "bench_step.py"

RECIPES = [f"cityscapes/deeplabv3_resnet18/{m}" for m in ("baseline", "kd", "afdcd")]
# Af-DCD with each speed switch alone, against its plain row (on the GPU only; --cpu checks that they load)
VARIANTS = [["method.afdcd.backend=eager"], ["train.channels_last=false"], ["train.optimizer_kernel=fused"],
            ["train.compile=[projector]"]]
ITERATIONS, EFFECTIVE = 40000, 16  # the Cityscapes recipe: 40k steps of 16 images
# the 2025 protocol's transformer pair: the SegFormer-B4 teacher's own training step and a B4 -> B0 KD
# step, one 1024x1024 crop per step (the release: 8 GPUs x 1 image), 160k steps of 8 images
TRANSFORMER = ["cityscapes/segformer_mitb4/teacher", "cityscapes/segformer_mitb0/kd"]
TRANSFORMER_ITERATIONS, TRANSFORMER_EFFECTIVE = 160000, 8
# bf16 against fp32 over the same steps: the mean relative loss difference allowed
PRECISION_TOLERANCE = 0.02


def gpu_tests(device: str) -> dict:
    env = {**os.environ, "AFDCD_TEST_DEVICE": device}
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", str(ROOT / "tests/test_gpu.py"), "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    lines = [ln for ln in res.stdout.splitlines() if " passed" in ln or " failed" in ln or " error" in ln]
    return {"returncode": res.returncode, "summary": lines[-1].strip("= ") if lines else "no summary (see output_tail)", "passed": res.returncode == 0,
            "output_tail": (res.stdout + res.stderr)[-4000:] if res.returncode else ""}


def bench(args: list[str], tmp: Path) -> tuple[dict | None, str]:
    """benchmarks/bench_step.py in its own process (a CUDA error is sticky: it would end every later
    measurement of this one): its JSON, or None and the end of its output."""
    out = tmp / "bench.json"
    out.unlink(missing_ok=True)
    res = subprocess.run([sys.executable, str(BENCH), *args, "--json", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=900)
    if res.returncode == 0 and out.is_file():
        return json.loads(out.read_text()), ""
    return None, (res.stdout + res.stderr)[-2500:]


def step_timings(device: str, batch: int, crop: tuple[int, int], warmup: int, steps: int, variants: bool,
                 tmp: Path) -> dict:
    """Each recipe at `batch`; on running out of GPU memory, at half the batch (2 such steps per
    16 images: said in the result). A run that fails is recorded with its error, and the rest go on."""
    from afdcd_bench.config import load_recipe

    out = {}
    runs = [(r, []) for r in RECIPES]
    for extra in VARIANTS:
        load_recipe(RECIPES[2], extra)  # a typo fails here, on the CPU too
        if variants:
            runs.append((RECIPES[2], extra))
    for recipe, extra in runs:
        key = " ".join([recipe, *extra])
        if device == "cpu":  # the recipes' compiled contrastive term would spend the --cpu run compiling
            extra = [*extra, "method.afdcd.backend=eager"]
        b = batch
        while True:
            result, error = bench([recipe, *extra, "--device", device, "--batch", str(b), "--crop", f"{crop[0]}x{crop[1]}",
                                   "--warmup", str(warmup), "--steps", str(steps)], tmp)
            if result is not None or "out of memory" not in error.lower() or b <= 1:
                break
            b //= 2
        if result is None:
            out[key] = {"error": error, "batch": b}
            continue
        micro = max(1, EFFECTIVE // b)
        result["steps_per_16_images"] = f"{b} x {micro}" if micro > 1 else str(b)  # batch x accumulation
        result["projected_hours_40k"] = result["total_ms"] * (EFFECTIVE / b) * ITERATIONS / 3.6e6
        out[key] = result
    return out


def transformer_timings(device: str, batch: int, crop: tuple[int, int], warmup: int, steps: int, tmp: Path) -> dict:
    """The SegFormer recipes' step: time, memory, and the hours of their 160k-step schedule on one device."""
    out = {}
    for recipe in TRANSFORMER:
        result, error = bench([recipe, "--device", device, "--batch", str(batch), "--crop", f"{crop[0]}x{crop[1]}",
                               "--warmup", str(warmup), "--steps", str(steps)], tmp)
        if result is None:
            out[recipe] = {"error": error, "batch": batch}
            continue
        result["projected_hours_160k"] = result["total_ms"] * (TRANSFORMER_EFFECTIVE / batch) * TRANSFORMER_ITERATIONS / 3.6e6
        out[recipe] = result
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run the chain on the CPU at tiny shapes")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu"))
    a = p.parse_args(argv)
    if not a.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; `scripts/gpu_check.sh --cpu` runs the chain on the CPU at tiny shapes")
    device = "cpu" if a.cpu else "cuda"
    # --cpu: the smallest crop at which Af-DCD's pooled map holds one 4x4 patch; batch 2 (ASPP's pooled BN needs 2)
    shape = dict(batch=2, crop=(128, 128), warmup=0, steps=1) if a.cpu else dict(batch=16, crop=(512, 1024), warmup=3, steps=8)
    precision_shape = dict(batch=2, crop=(128, 128), steps=2) if a.cpu else dict(batch=8, crop=(512, 1024), steps=50)
    started = datetime.datetime.now()
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "started": started.isoformat(timespec="seconds"), "mode": "cpu (tiny shapes)" if a.cpu else "gpu"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check-{device}-{started:%Y%m%d-%H%M%S}.json"

    def save() -> None:  # after each part: a check stopped midway keeps what it measured
        result["seconds"] = (datetime.datetime.now() - started).total_seconds()
        path.write_text(json.dumps(result, indent=2))

    transformer_shape = dict(batch=2, crop=(128, 128), warmup=0, steps=1) if a.cpu else dict(batch=1, crop=(1024, 1024), warmup=2, steps=5)
    with tempfile.TemporaryDirectory() as tmp:
        result["steps"] = step_timings(device, **shape, variants=not a.cpu, tmp=Path(tmp))
        save()
        result["segformer_steps"] = transformer_timings(device, **transformer_shape, tmp=Path(tmp))
        save()
        ps = precision_shape
        cpu_eager = ["method.afdcd.backend=eager"] if device == "cpu" else []
        curves, error = bench([RECIPES[2], *cpu_eager, "--device", device, "--batch", str(ps["batch"]), "--crop",
                               f"{ps['crop'][0]}x{ps['crop'][1]}", "--compare-precision", str(ps["steps"])], Path(tmp))
    if curves is None:
        curves = {"error": error, "agree": False, "steps": ps["steps"], "batch": ps["batch"],
                  "mean_relative_difference": float("nan"), "max_relative_difference": float("nan")}
    curves["tolerance_mean_relative"] = PRECISION_TOLERANCE
    curves["agree"] = curves["mean_relative_difference"] <= PRECISION_TOLERANCE
    result["bf16_vs_fp32"] = curves
    save()
    result["tests"] = gpu_tests(device)
    save()
    print(f"gpu tests: {result['tests']['summary']}")
    for recipe, r in result["steps"].items():
        if "error" in r:
            print(f"{recipe}: FAILED at batch {r['batch']}: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
            continue
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["parts_ms"].items())
        print(f"{recipe}: {r['total_ms']:.0f} ms per step of {r['batch']} ({r['steps_per_16_images']} per 16 images), "
              f"{r['images_per_second']:.1f} img/s, peak {r['peak_memory_mb']:.0f} MB, projected 40k: "
              f"{r['projected_hours_40k']:.2f} h [{parts} ms]")
    for recipe, r in result["segformer_steps"].items():
        if "error" in r:
            print(f"{recipe}: FAILED at batch {r['batch']}: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
            continue
        print(f"{recipe}: {r['total_ms']:.0f} ms per step of {r['batch']}, peak {r['peak_memory_mb']:.0f} MB, projected 160k "
              f"steps of 8: {r['projected_hours_160k']:.2f} h [{', '.join(f'{k} {v:.0f}' for k, v in r['parts_ms'].items())} ms]")
    print(f"bf16 vs fp32 ({curves['steps']} steps of {curves['batch']}, Af-DCD): mean relative loss difference "
          f"{curves['mean_relative_difference']:.4f}, max {curves['max_relative_difference']:.4f} "
          f"({'within' if curves['agree'] else 'OUTSIDE'} {PRECISION_TOLERANCE})")
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    failed = [k for part in ("steps", "segformer_steps") for k, r in result[part].items() if "error" in r]
    return 0 if result["tests"]["passed"] and curves["agree"] and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
