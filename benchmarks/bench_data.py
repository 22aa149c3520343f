"""What a training item costs a core, with and without the decoded-pixel cache, and the cores each
recipe's measured GPU rate needs. Everything is measured in this one run, on one thread:

- Cityscapes-sized frames (2048x1024 PNGs of smooth colour fields with mild noise: about the size
  and decode time of real frames; random noise would decode several times slower) and VOC-sized
  JPEGs (500x375), each in its benchmark's layout, read through the real datasets;
- per item: decoding the image file alone, loading the pair (image, label, checks, label map), the
  training item uncached and cached (crop, resampling, nearest-neighbour label, flip, and its share
  of the batch's collation; normalisation is done on the device: data/batches.py), as the mean over
  each item's draws of several epochs (every scale is drawn), each draw the best of --repeats;
- items/s per core and the ratios, against the issue's target: the cached item at most 0.35x of
  decoding the PNG alone;
- the loader cores each recipe of results/gpu/ needs to feed its measured images/s, with and without
  the cache (target: the R18 baseline's rate from 6 cores or fewer);
- images/s through a real DataLoader with N workers, cached.

    python benchmarks/bench_data.py                  # about 2 minutes on one core
    python benchmarks/bench_data.py --json out.json  # also write the numbers
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from afdcd_bench.data import build_dataset  # noqa: E402
from afdcd_bench.data.cache import build_cache, cache_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.35  # the cached item against decoding the PNG alone: a third of any decode-every-time pipeline
TARGET_CORES = 6  # cores that must feed the R18 baseline's measured rate with the cache
CROPS = {"cityscapes": (512, 1024), "voc": (512, 512)}  # the recipes' crops


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    scale = w / 2048
    field = np.stack([np.sin(yy / ((31 + 7 * c) * scale) + phase[c]) + np.cos(xx / ((47 + 5 * c) * scale) - phase[c])
                      for c in range(3)], -1)
    return (128 + 55 * field + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _regions(h: int, w: int, values: tuple[int, ...]) -> np.ndarray:
    label = np.full((h, w), values[0], np.uint8)
    label[: h // 3] = values[1]
    label[h // 2:, w // 4: w // 2] = values[2]
    label[h // 3: h // 2, :: max(1, w // 21)] = values[3]
    return label


def write_cityscapes_tree(root: Path, images: int, size: tuple[int, int] = (1024, 2048), seed: int = 0) -> Path:
    """`images` train frames (and 1 val frame) in the Cityscapes layout, labelIds of a few classes."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", images), ("val", 1)):
        for i in range(n):
            stem = f"bench_{i:06d}_000019"
            img = root / "leftImg8bit" / split / "bench" / f"{stem}_leftImg8bit.png"
            lab = root / "gtFine" / split / "bench" / f"{stem}_gtFine_labelIds.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_photo(rng, h, w)).save(img)
            Image.fromarray(_regions(h, w, (7, 23, 26, 0))).save(lab)  # road, sky, car, unlabeled
    return root


def write_voc_tree(root: Path, images: int, size: tuple[int, int] = (375, 500), seed: int = 0) -> Path:
    """`images` train JPEGs (quality 90) with SegmentationClassAug labels in the VOC layout."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [f"2007_{i:06d}" for i in range(images)]
    for n in names:
        Image.fromarray(_photo(rng, h, w)).save(root / "JPEGImages" / f"{n}.jpg", quality=90)
        Image.fromarray(_regions(h, w, (0, 15, 7, 255))).save(root / "SegmentationClassAug" / f"{n}.png")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(names) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(names[0] + "\n")
    return root


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Milliseconds of the fastest of `repeats` calls (the machine's noise only ever adds)."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def item_costs(name: str, root: Path, items: int, epochs: int, repeats: int, batch: int) -> dict[str, Any]:
    """Mean ms per item on this thread of each way of getting it (see the module)."""
    kw = dict(train=True, crop_size=CROPS[name], scale_range=(0.5, 2.0), seed=0, flip=True, scale_step=0.1)
    plain = build_dataset(name, root, "train", cache="off", **kw)
    t = time.perf_counter()
    folder = build_cache(plain, cache_folder(root, name, "train"), log=lambda s: None)
    build_s = time.perf_counter() - t
    cached = build_dataset(name, root, "train", cache="required", **kw)
    n = min(items, len(plain))
    ms: dict[str, list[float]] = {"decode_image": [], "load_pair": [], "uncached_item": [], "cached_item": []}
    for i in range(n):
        image_path = plain.items[i][0]
        ms["decode_image"].append(_best(lambda: np.asarray(Image.open(image_path).convert("RGB")), repeats))
        ms["load_pair"].append(_best(lambda: plain.load(i), repeats))
        for epoch in range(epochs):  # each epoch draws another scale, crop and flip
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            ms["uncached_item"].append(_best(lambda: plain[i], repeats))
            ms["cached_item"].append(_best(lambda: cached[i], repeats))
    group = [cached[i % n] for i in range(batch)]
    collate = _best(lambda: torch.utils.data.default_collate(group), repeats) / batch
    means = {k: statistics.fmean(v) for k, v in ms.items()}
    means["uncached_item"] += collate
    means["cached_item"] += collate
    size = sum(p.stat().st_size for p in folder.glob("*.npy"))
    sources = sum(p.stat().st_size for pair in plain.items[:len(plain)] for p in pair)
    return {"ms": means, "collate_ms": collate, "items": n, "draws": n * epochs, "crop": list(CROPS[name]),
            "cache_bytes_per_item": size / len(plain), "source_bytes_per_item": sources / len(plain),
            "cache_build_s_per_item": build_s / len(plain), "cached_dataset": cached}


def loader_rate(ds: Any, workers: int, batch: int, batches: int) -> float:
    """Training images per second through a DataLoader (its first batch, with the workers' start, untimed)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for b, got in zip(range(batches), it):
        n += got["image"].shape[0]
    return n / (time.perf_counter() - t) if n else float("nan")


def gpu_rates(folder: Path) -> dict[str, float]:
    """Each recipe's (and option's) measured training images/s in results/gpu/*.json, by label."""
    out: dict[str, float] = {}
    for path in sorted(glob.glob(str(folder / "*.json"))):
        body = json.loads(Path(path).read_text())
        for label, step in (body.get("steps") or {}).items():
            if isinstance(step, dict) and step.get("images_per_second"):
                out[f"{label} ({body.get('device', '?')})"] = float(step["images_per_second"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=8, help="Cityscapes-sized frames to generate")
    p.add_argument("--voc-images", type=int, default=16, help="VOC-sized JPEGs to generate")
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], help="the frames' H W")
    p.add_argument("--epochs", type=int, default=4, help="draws of each item (another scale, crop and flip each)")
    p.add_argument("--repeats", type=int, default=3, help="calls per draw; the fastest counts")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", default="2", help="DataLoader worker counts to time, comma-separated (cached)")
    p.add_argument("--gpu-results", default=str(ROOT / "results/gpu"), help="measured GPU rates (gpu_check's JSON)")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # per core: a loader worker runs one thread too
    console = Console()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "torch": torch.__version__, "frame": a.size, "benchmarks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"cityscapes": write_cityscapes_tree(Path(tmp) / "cityscapes", a.frames, tuple(a.size)),
                 "voc": write_voc_tree(Path(tmp) / "voc", a.voc_images)}
        for name, root in trees.items():
            costs = item_costs(name, root, {"cityscapes": a.frames, "voc": a.voc_images}[name], a.epochs, a.repeats, a.batch)
            ds = costs.pop("cached_dataset")
            workers = [int(w) for w in a.workers.split(",") if w.strip()]
            batches = max(1, min(6, len(ds) // a.batch - 1))
            costs["loader_images_per_second"] = {w: loader_rate(ds, w, a.batch, batches) for w in workers} if len(ds) >= 2 * a.batch else {}
            ms = costs["ms"]
            costs["items_per_second_per_core"] = {k: 1000 / v for k, v in ms.items()}
            costs["ratios"] = {"cached_item_over_decode_image": ms["cached_item"] / ms["decode_image"],
                               "uncached_item_over_decode_image": ms["uncached_item"] / ms["decode_image"],
                               "cached_item_over_uncached_item": ms["cached_item"] / ms["uncached_item"]}
            result["benchmarks"][name] = costs
    rates = gpu_rates(Path(a.gpu_results))
    city = result["benchmarks"]["cityscapes"]["items_per_second_per_core"]
    result["cores_needed"] = {label: {"images_per_second": r, "uncached": math.ceil(r / city["uncached_item"]),
                                      "cached": math.ceil(r / city["cached_item"])}
                              for label, r in rates.items() if label.startswith("cityscapes/")}

    table = Table(title="one training item on one core (mean ms; items/s)")
    for col in ("benchmark", "decode image", "load pair", "item, uncached", "item, cached", "cached / decode",
                "uncached / decode", "cache per item"):
        table.add_column(col, justify="right" if col != "benchmark" else "left")
    for name, c in result["benchmarks"].items():
        ms, ips, r = c["ms"], c["items_per_second_per_core"], c["ratios"]
        cell = lambda k: f"{ms[k]:.1f} ({ips[k]:.0f}/s)"  # noqa: E731
        table.add_row(f"{name} {c['crop'][0]}x{c['crop'][1]}", cell("decode_image"), cell("load_pair"), cell("uncached_item"),
                      cell("cached_item"), f"{r['cached_item_over_decode_image']:.2f}",
                      f"{r['uncached_item_over_decode_image']:.2f}",
                      f"{c['cache_bytes_per_item'] / 2**20:.2f} MB (files {c['source_bytes_per_item'] / 2**20:.2f})")
    console.print(table)
    for name, c in result["benchmarks"].items():
        for w, rate in c["loader_images_per_second"].items():
            console.print(f"{name}: DataLoader, cached, {w} worker(s), batch {a.batch}: {rate:.1f} images/s")
    if result["cores_needed"]:
        need = Table(title="loader cores to feed each measured GPU rate (results/gpu/), Cityscapes items")
        for col in ("recipe", "images/s", "uncached", "cached"):
            need.add_column(col, justify="right" if col != "recipe" else "left")
        for label, n in result["cores_needed"].items():
            need.add_row(label, f"{n['images_per_second']:.1f}", str(n["uncached"]), str(n["cached"]))
        console.print(need)
    ratio = result["benchmarks"]["cityscapes"]["ratios"]["cached_item_over_decode_image"]
    baseline = [n for label, n in result["cores_needed"].items() if label.startswith("cityscapes/deeplabv3_resnet18/baseline ")]
    result["target"] = {"ratio": ratio, "ratio_met": ratio <= TARGET_RATIO,
                        "baseline_cores_cached": baseline[0]["cached"] if baseline else None,
                        "baseline_cores_met": bool(baseline) and baseline[0]["cached"] <= TARGET_CORES}
    console.print(f"target: cached Cityscapes item / decoding its PNG alone = {ratio:.2f} (at most {TARGET_RATIO}): "
                  f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    if baseline:
        console.print(f"target: the R18 baseline's {baseline[0]['images_per_second']:.0f} images/s fed by {baseline[0]['cached']} "
                      f"core(s) with the cache, {baseline[0]['uncached']} without (at most {TARGET_CORES}): "
                      f"{'met' if result['target']['baseline_cores_met'] else 'NOT met'}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
