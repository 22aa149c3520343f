"""Time and peak memory of the Af-DCD contrastive term and whole loss, forward + backward,
against a reference-style formulation (full similarity matrix, boolean masks repeated per
patch, positives/negatives gathered and concatenated, then cross-entropy) in the same run.

    python benchmarks/bench_losses.py                 # CPU-sized shape and the paper's shape
    python benchmarks/bench_losses.py --device cuda   # GPU (peak memory from the allocator)

Each measurement runs in a fresh subprocess so that its peak memory is its own. CPU: the
process's peak RSS (VmHWM) is reset after the warm-up passes (which include torch.compile's
compilation for the compiled backend) and the peak of the measured passes is reported above the
RSS right before them, in a separate run where glibc mmaps every allocation from 64 KiB up (freed
tensors then leave RSS at once; timings come from a run with the default allocator).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {
    # name: (batch, student ch, teacher ch, feature H, W, pool)
    "cpu": (2, 128, 512, 32, 32, 4),
    "paper": (2, 512, 2048, 64, 128, 4),
}


def reference_contrastive(p: torch.Tensor, t: torch.Tensor, groups: int = 16, patch=(4, 4), tau: float = 0.07) -> torch.Tensor:
    """The released code's way: materialise masks per patch, gather, concatenate, CE."""
    b, c, h, w = p.shape
    k = patch[0] * patch[1]

    def fmt(x):
        x = x.reshape(b, c, h // patch[0], patch[0], w // patch[1], patch[1]).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, k, groups, c // groups).reshape(-1, k * groups, c // groups)

    sim = -torch.cdist(fmt(p), fmt(t), p=1)
    n = sim.shape[0]
    eye = torch.eye(k * groups, dtype=torch.bool, device=sim.device).repeat(n, 1, 1)
    grp = torch.arange(groups, device=sim.device).repeat(k)
    neg = (grp[:, None] != grp[None, :]).repeat(n, 1, 1)
    logits = torch.cat([sim[eye].view(n * k * groups, -1), sim[neg].view(n * k * groups, -1)], dim=1) / tau
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=sim.device)
    return F.cross_entropy(logits, target, reduction="sum") / (h * w) / b


def _rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _reset_peak(device: torch.device) -> float:
    """Forget the peak so far; returns the current usage (MB) the peak is measured above."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to the current RSS
        f.write("5")
    return _rss_mb("VmRSS")


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_mb("VmHWM")


def worker(kind: str, shape: str, device: str, repeats: int, warmup: int) -> dict:
    from afdcd_bench.losses import AfDCDLoss, contrastive_loss

    dev = torch.device(device)
    b, cs, ct, h, w, pool = SHAPES[shape]
    part, variant = kind.split("_")
    torch.manual_seed(0)
    if part == "ctr":
        hp, wp = h // pool, w // pool
        x = torch.randn(b, ct, hp, wp, device=dev, requires_grad=True)
        t = torch.randn(b, ct, hp, wp, device=dev)
        if variant == "reference":
            fn = lambda: reference_contrastive(x, t)  # noqa: E731
        else:
            fn = lambda: contrastive_loss(x, t, backend=variant)  # noqa: E731
    else:
        loss = AfDCDLoss(cs, ct, pool=pool, backend="eager" if variant == "reference" else variant).to(dev)
        x = torch.randn(b, cs, h, w, device=dev, requires_grad=True)
        t = torch.randn(b, ct, h, w, device=dev)
        mask = loss.make_mask(torch.zeros(b, ct, h, w, device=dev))
        if variant != "reference":
            fn = lambda: sum(loss(x, t, mask))  # noqa: E731
        else:
            def fn():
                proj = loss.projector(loss.align(x) * mask)
                fd = (proj - t).pow(2).sum() / b
                return fd + reference_contrastive(F.max_pool2d(proj, pool), F.max_pool2d(t, pool))
    for _ in range(warmup):  # warm-up (and compilation)
        x.grad = None
        fn().backward()
    x.grad = None
    before = _reset_peak(dev)
    times = []
    value = None
    for _ in range(repeats):
        x.grad = None
        t0 = time.perf_counter()
        out = fn()
        out.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        value = float(out.detach())
    peak = _peak(dev) - before
    return {"time_s": sorted(times)[len(times) // 2], "peak_mb": peak, "value": value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", default=["cpu", "paper"], choices=sorted(SHAPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="passes before timing (the first compiles)")
    ap.add_argument("--whole", action="store_true", help="also the whole AfDCDLoss (slow on CPU at the paper's shape)")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.device, args.repeats, args.warmup)))
        return

    def measure(kind: str, shape: str, env: dict[str, str]) -> dict:
        cmd = [sys.executable, __file__, "--worker", kind, shape, "--device", args.device, "--repeats", str(args.repeats),
               "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env})
        return json.loads(out.stdout.strip().splitlines()[-1])

    def run(kind: str, shape: str) -> dict:
        """Time with the default allocator; on CPU, memory from a second run in which glibc mmaps every
        allocation from 64 KiB up and unmaps it when freed, so that RSS follows the live tensors."""
        timed = measure(kind, shape, {})
        if args.device != "cpu":
            return timed
        return {**timed, "peak_mb": measure(kind, shape, {"MALLOC_MMAP_THRESHOLD_": "65536"})["peak_mb"]}

    print(f"device: {args.device}; median of {args.repeats} forward+backward passes after {args.warmup} warm-up passes; "
          f"memory: peak above the state right before the measured passes")
    parts = [("ctr", "contrastive term")] + ([("whole", "whole AfDCDLoss")] if args.whole else [])
    for shape in args.shapes:
        b, cs, ct, h, w, pool = SHAPES[shape]
        for part, label in parts:
            ref = run(f"{part}_reference", shape)
            print(f"{label} at {shape} shape (B={b}, {cs}->{ct} ch, {h}x{w}, pool {pool}): "
                  f"reference {1e3 * ref['time_s']:.1f} ms / {ref['peak_mb']:.0f} MB")
            for variant in ("eager", "compiled"):
                r = run(f"{part}_{variant}", shape)
                same = abs(r["value"] - ref["value"]) <= 1e-5 * max(1.0, abs(ref["value"]))
                print(f"  {variant:8s} {1e3 * r['time_s']:8.1f} ms / {r['peak_mb']:5.0f} MB: speed-up x{ref['time_s'] / r['time_s']:.2f}, "
                      f"memory ratio {r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f}; values "
                      f"{'identical' if same else 'DIFFER'} ({r['value']:.6g} vs {ref['value']:.6g})")


if __name__ == "__main__":
    main()
