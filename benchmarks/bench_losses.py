"""Time and peak memory of the Af-DCD contrastive term and whole loss, forward + backward,
against a reference-style formulation (full similarity matrix, boolean masks repeated per
patch, positives/negatives gathered and concatenated, then cross-entropy) in the same run.

    python benchmarks/bench_losses.py                 # CPU-sized shape and the paper's shape
    python benchmarks/bench_losses.py --device cuda   # GPU (peak memory from the allocator)

Each measurement runs in a fresh subprocess so that its peak memory is its own
(CPU: peak RSS above the same process's state right before the measured call).
"""
from __future__ import annotations

import argparse
import json
import resource
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


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(kind: str, shape: str, device: str, repeats: int) -> dict:
    from afdcd_bench.losses import AfDCDLoss, contrastive_loss

    dev = torch.device(device)
    b, cs, ct, h, w, pool = SHAPES[shape]
    torch.manual_seed(0)
    if kind.startswith("ctr"):
        hp, wp = h // pool, w // pool
        x = torch.randn(b, ct, hp, wp, device=dev, requires_grad=True)
        t = torch.randn(b, ct, hp, wp, device=dev)
        fn = (lambda: contrastive_loss(x, t)) if kind == "ctr_ours" else (lambda: reference_contrastive(x, t))
    else:
        loss = AfDCDLoss(cs, ct, pool=pool).to(dev)
        x = torch.randn(b, cs, h, w, device=dev, requires_grad=True)
        t = torch.randn(b, ct, h, w, device=dev)
        mask = loss.make_mask(torch.zeros(b, ct, h, w, device=dev))
        if kind == "whole_ours":
            fn = lambda: sum(loss(x, t, mask))  # noqa: E731
        else:
            def fn():
                proj = loss.projector(loss.align(x) * mask)
                fd = (proj - t).pow(2).sum() / b
                return fd + reference_contrastive(F.max_pool2d(proj, pool), F.max_pool2d(t, pool))
    fn().backward()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    before = _peak(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
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
    peak = _peak(dev) - (0.0 if dev.type == "cuda" else before)
    return {"time_s": sorted(times)[len(times) // 2], "peak_mb": peak, "value": value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", default=["cpu", "paper"], choices=sorted(SHAPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--whole", action="store_true", help="also the whole AfDCDLoss (slow on CPU at the paper's shape)")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.device, args.repeats)))
        return

    def run(kind: str, shape: str) -> dict:
        cmd = [sys.executable, __file__, "--worker", kind, shape, "--device", args.device, "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        return json.loads(out)

    print(f"device: {args.device}; median of {args.repeats} forward+backward passes; memory: peak above the pre-run state")
    pairs = [("ctr_ours", "ctr_reference", "contrastive term")]
    if args.whole:
        pairs.append(("whole_ours", "whole_reference", "whole AfDCDLoss"))
    for shape in args.shapes:
        b, cs, ct, h, w, pool = SHAPES[shape]
        for ours, ref, label in pairs:
            a, r = run(ours, shape), run(ref, shape)
            same = abs(a["value"] - r["value"]) <= 1e-5 * max(1.0, abs(r["value"]))
            print(
                f"{label:18s} {shape:6s} B={b} {cs}->{ct} ch {h}x{w} pool {pool}: "
                f"ours {1e3 * a['time_s']:.1f} ms / {a['peak_mb']:.0f} MB, reference {1e3 * r['time_s']:.1f} ms / {r['peak_mb']:.0f} MB; "
                f"speed-up x{r['time_s'] / a['time_s']:.2f}, memory ratio {a['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}; "
                f"values {'identical' if same else 'DIFFER'} ({a['value']:.6g} vs {r['value']:.6g})"
            )


if __name__ == "__main__":
    main()
