"""`afdcd-bench plot`: figures from run records, for a paper or a README.

Per (benchmark, student): the per-class IoU change of each distilled student over the baseline
(mean over seeds of the final checkpoint's IoU), and the validation mIoU curves of every method
over iterations (mean over seeds, shaded min..max), with the teacher's final mIoU as a line.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..config import run_method  # noqa: E402
from ..engine.records import read_records  # noqa: E402

CLASS_NAMES: dict[str, list[str]] = {
    "digits": ["background"] + [str(d) for d in range(10)],
    "cityscapes": ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
                   "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"],
    "camvid": ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"],
    "voc": ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
            "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor"],
}
COLOURS = {"baseline": "#7f7f7f", "kd": "#1f77b4", "afdcd": "#d62728", "teacher": "#2ca02c"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _mean_iou(recs: list[dict[str, Any]]) -> np.ndarray | None:
    ious = [r["final_iou"] for r in recs if r.get("final_iou")]
    if not ious:
        return None
    return np.nanmean(np.array(ious, dtype=float), axis=0) * 100


def _save(fig: plt.Figure, ax: plt.Axes, path: Path) -> Path:
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_class_deltas(bench: str, student: str, by_method: dict[str, list[dict[str, Any]]], out: Path) -> Path | None:
    base = _mean_iou(by_method.get("baseline", []))
    methods = [m for m in ("kd", "afdcd") if _mean_iou(by_method.get(m, [])) is not None]
    if base is None or not methods:
        return None
    names = CLASS_NAMES.get(bench, [str(i) for i in range(len(base))])
    if len(names) != len(base):
        names = [str(i) for i in range(len(base))]
    x = np.arange(len(base))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(base) + 2), 3.6))
    for i, m in enumerate(methods):
        delta = _mean_iou(by_method[m]) - base
        n = len(by_method[m])
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, delta, width, label=f"{m} (n={n})", color=COLOURS.get(m))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, names, rotation=60 if len(base) > 12 else 0, ha="right" if len(base) > 12 else "center")
    ax.set_ylabel("IoU change vs baseline (points)")
    ax.set_title(f"{bench}, {student}: per-class IoU, distilled minus baseline (n={len(by_method['baseline'])})")
    return _save(fig, ax, out / f"{_slug(bench)}__{_slug(student)}__class_iou_delta.png")


def plot_curves(bench: str, student: str, by_method: dict[str, list[dict[str, Any]]], teacher: list[dict[str, Any]], out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for m in ("baseline", "kd", "afdcd"):
        runs = [r["history"] for r in by_method.get(m, []) if r.get("history")]
        if not runs:
            continue
        steps = sorted({h["step"] for run in runs for h in run})
        table = np.full((len(runs), len(steps)), np.nan)
        for i, run in enumerate(runs):
            for h in run:
                table[i, steps.index(h["step"])] = 100 * h["miou"]
        mean = np.nanmean(table, axis=0)
        ax.plot(steps, mean, marker="o", ms=3, label=f"{m} (n={len(runs)})", color=COLOURS.get(m))
        if len(runs) > 1:
            ax.fill_between(steps, np.nanmin(table, axis=0), np.nanmax(table, axis=0), alpha=0.15, color=COLOURS.get(m))
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    finals = [100 * r["final_miou"] for r in teacher if r.get("final_miou") is not None]
    if finals:
        ax.axhline(float(np.mean(finals)), ls="--", color=COLOURS["teacher"], label=f"teacher ({teacher[0]['student']})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"{bench}, {student}: validation mIoU")
    return _save(fig, ax, out / f"{_slug(bench)}__{_slug(student)}__val_miou.png")


def plot_results(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the figures under out_dir (default RESULTS_DIR/figures); returns their paths."""
    records = read_records(Path(results_dir))
    out = Path(out_dir) if out_dir else Path(results_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    teachers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        method = run_method(r["recipe"], r["method"])
        if method == "teacher":
            teachers[r["benchmark"]].append(r)
        else:
            groups[(r["benchmark"], r["student"])][method].append(r)
    paths = []
    for (bench, student), by_method in sorted(groups.items()):
        for p in (plot_class_deltas(bench, student, by_method, out), plot_curves(bench, student, by_method, teachers[bench], out)):
            if p is not None:
                paths.append(p)
    return paths
