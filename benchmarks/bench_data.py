"""Speed of the training data pipeline: milliseconds per stage of one Cityscapes-sized training item
on one thread, its ratio to decoding the file and resizing it once with Pillow, and images/s of the
real training dataset through a DataLoader with N workers. All measured in this one run.

    python benchmarks/bench_data.py                       # a generated Cityscapes-layout tree, 1024x2048
    python benchmarks/bench_data.py --root /data/cityscapes --images 32 --workers 0,4,8
    python benchmarks/bench_data.py --json out.json       # also write the numbers

The generated frames are smooth colour fields with mild noise (about the PNG size and decode time
of real Cityscapes frames, not random noise, which decodes several times slower).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from afdcd_bench.data import build_dataset  # noqa: E402
from afdcd_bench.data.transforms import draw_scale, normalize, train_augment  # noqa: E402


def write_cityscapes_tree(root: Path, images: int, size: tuple[int, int] = (1024, 2048), seed: int = 0) -> Path:
    """`images` train frames (and 1 val frame) in the Cityscapes layout, labelIds of a few classes."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, n in (("train", images), ("val", 1)):
        for i in range(n):
            stem = f"bench_{i:06d}_000019"
            img = root / "leftImg8bit" / split / "bench" / f"{stem}_leftImg8bit.png"
            lab = root / "gtFine" / split / "bench" / f"{stem}_gtFine_labelIds.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            phase = rng.uniform(0, 6.28, 3)
            field = np.stack([np.sin(yy / (31 + 7 * c) + phase[c]) + np.cos(xx / (47 + 5 * c) - phase[c]) for c in range(3)], -1)
            pixels = 128 + 55 * field + rng.normal(0, 6, (h, w, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(img)
            label = np.full((h, w), 7, np.uint8)  # road
            label[: h // 3] = 23  # sky
            label[h // 2:, w // 4: w // 2] = 26  # car
            label[h // 3: h // 2, ::97] = 0  # unlabeled
            Image.fromarray(label).save(lab)
    return root


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def per_stage(ds, indices: list[int], repeats: int) -> dict[str, float]:
    """Median ms per item of each stage, on this thread."""
    rows: dict[str, list[float]] = {k: [] for k in ("decode", "decode_and_pillow_resize", "augment", "normalize", "item")}
    for i in indices:
        path = ds.items[i][0] if hasattr(ds, "items") else None
        image, label, _ = ds.load(i)
        rows["decode"].append(_ms(lambda: ds.load(i), repeats))
        scale = draw_scale(ds.rng(i), ds.scale_range, ds.scale_step)  # the item's own first draw
        size = (max(1, round(label.shape[1] * scale)), max(1, round(label.shape[0] * scale)))
        if path is not None:
            rows["decode_and_pillow_resize"].append(_ms(lambda: Image.open(path).convert("RGB").resize(size, Image.BILINEAR), repeats))
        aug = lambda: train_augment(image, label, ds.crop_size, ds.scale_range, ds.rng(i), ds.flip, ds.scale_step)  # noqa: E731
        rows["augment"].append(_ms(aug, repeats))
        crop = aug()[0]
        rows["normalize"].append(_ms(lambda: normalize(crop, ds.normalization), repeats))
        rows["item"].append(_ms(lambda: ds[i], repeats))
    return {k: statistics.median(v) for k, v in rows.items() if v}


def loader_rate(ds, workers: int, batch: int) -> float:
    """Training images per second through a DataLoader (worker start-up excluded: the first batch)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, drop_last=True,
                                         persistent_workers=False)
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for b in it:
        n += b["image"].shape[0]
    return n / (time.perf_counter() - t) if n else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="a Cityscapes folder (default: generate one in a temporary folder)")
    p.add_argument("--images", type=int, default=16, help="train frames to generate / to use")
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], help="generated frame size H W")
    p.add_argument("--crop", type=int, nargs=2, default=[512, 1024])
    p.add_argument("--stage-items", type=int, default=4, help="items timed per stage (median over them)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="0,2", help="loader worker counts, comma-separated")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # per-stage times are per core; loader workers each use one thread too
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root) if a.root else write_cityscapes_tree(Path(tmp) / "cityscapes", a.images, tuple(a.size))
        ds = build_dataset("cityscapes", root, "train", train=True, crop_size=tuple(a.crop), scale_range=(0.5, 2.0),
                           seed=0, flip=True, scale_step=0.1)
        n = min(a.images, len(ds))
        if n < max(a.stage_items, 3 * a.batch):
            raise SystemExit(f"need at least {max(a.stage_items, 3 * a.batch)} train images (3 batches: the first, with the "
                             f"workers' start, is not timed), found {n}")
        ds_used = torch.utils.data.Subset(ds, range(n))
        stages = per_stage(ds, list(range(a.stage_items)), a.repeats)
        workers = [int(w) for w in a.workers.split(",") if w.strip()]
        rates = {w: loader_rate(ds_used, w, a.batch) for w in workers}
    ref = stages.get("decode_and_pillow_resize")
    result = {"stages_ms": stages, "item_over_decode_and_resize": stages["item"] / ref if ref else None,
              "loader_images_per_second": rates, "cpus": os.cpu_count(), "crop": a.crop,
              "frame": a.size if not a.root else "real", "torch": torch.__version__}
    console = Console()
    table = Table(title="one training item, one thread (median ms)")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for k, v in stages.items():
        table.add_row(k, f"{v:.1f}")
    console.print(table)
    if ref:
        console.print(f"item / (decode + one Pillow resize) = {result['item_over_decode_and_resize']:.2f}")
    for w, r in rates.items():
        console.print(f"DataLoader, {w} workers, batch {a.batch}: {r:.1f} images/s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
