"""KT's logit tailoring, forward + backward: the vectorised pass of afdcd_bench.losses.kt against the
release's loop over (image, class) pairs with in-place clamps (its transcription in tests/test_kt.py),
in the same run, at the paper's shape (19 classes, 512x1024 crops, 2 images per GPU) or a smaller one.

    python benchmarks/bench_kt.py                    # CPU: 2 images of 19 x 256 x 512 (a quarter of the paper's pixels)
    python benchmarks/bench_kt.py --shape paper      # 2 x 19 x 512 x 1024
    python benchmarks/bench_kt.py --device cuda --shape paper

Prints median milliseconds of each and their ratio, and checks the two agree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from afdcd_bench.losses.kt import kt_logit_tailoring_loss  # noqa: E402
from test_kt import release_lt  # noqa: E402  (the release's loop, transcribed for the equality test)

SHAPES = {"cpu": (2, 19, 256, 512), "paper": (2, 19, 512, 1024)}


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:]), value  # the first pass warms up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    b, k, h, w = SHAPES[a.shape]
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(b, k, h // 8, w // 8, generator=g).to(dev)
    z_t = (2 * torch.randn(b, k, h // 8, w // 8, generator=g)).to(dev)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[:, : h // 10] = 255
    labels = labels.to(dev)

    def run(loss_fn):
        def once():
            x = z_s.clone().requires_grad_(True)
            loss = loss_fn(x)
            loss.backward()
            return float(loss.detach())
        return once

    import test_kt

    test_kt.K = k  # the transcription's class count
    ours_ms, ours = timed(run(lambda x: kt_logit_tailoring_loss(x, z_t, labels, k)), dev, a.repeats)
    loop_ms, theirs = timed(run(lambda x: release_lt(x, z_t, labels)), dev, a.repeats)
    print(f"KT logit tailoring, {b} x {k} x {h} x {w} on {a.device}, forward + backward, median of {a.repeats}:")
    print(f"  vectorised {ours_ms:.1f} ms, the release's loop {loop_ms:.1f} ms: {loop_ms / ours_ms:.1f}x")
    print(f"  loss {ours:.6f} vs {theirs:.6f} (relative difference {abs(ours - theirs) / abs(theirs):.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
