"""`afdcd-bench plot`: figures from run records, for a paper or a README.

Per (benchmark, student, protocol): the per-class IoU change of each distilled student over the
baseline (mean over seeds of the final checkpoint's IoU, with +-1 standard error of that difference
over seeds), and the validation mIoU curves of every method over iterations (mean over seeds,
shaded min..max), with the teacher's final mIoU as a line. The methods come from the records.
Runs of other protocols (a quick schedule, another crop) get figures of their own.
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

from ..engine.records import read_records  # noqa: E402
from .table import frame_of, method_rank  # noqa: E402

CLASS_NAMES: dict[str, list[str]] = {
    "digits": ["background"] + [str(d) for d in range(10)],
    "cityscapes": ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
                   "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"],
    "camvid": ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"],
    "voc": ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
            "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor"],
}
# one colour per method in every figure of every folder (a method's colour never depends on which
# other methods a figure holds); methods not named here get one from their name
COLOURS = {"baseline": "#000000", "kd": "#1f77b4", "afdcd": "#d62728", "teacher": "#2ca02c", "cwd+kd": "#9467bd",
           "cwd+kd+adv": "#9467bd", "dist": "#8c564b", "cirkd+kd": "#e377c2", "maskd": "#17becf", "skd+kd+adv": "#bcbd22",
           "ifvd+kd+adv": "#ff7f0e", "kt": "#7f7f7f", "fitnet": "#aec7e8", "kd+fitnet": "#393b79"}
OTHER_COLOURS = ["#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#ffbb78"]


def _colour_of(method: str, methods: list[str] | None = None) -> str:
    import zlib

    return COLOURS.get(method) or OTHER_COLOURS[zlib.crc32(method.encode()) % len(OTHER_COLOURS)]


def _method_order(methods: Any) -> list[str]:
    return sorted(methods, key=method_rank)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _ious(recs: list[dict[str, Any]]) -> np.ndarray | None:
    """(seeds, classes) final per-class IoU in points, or None."""
    ious = [r["final_iou"] for r in recs if r.get("final_iou")]
    if not ious:
        return None
    return np.array(ious, dtype=float) * 100


def _sem(table: np.ndarray) -> np.ndarray:
    """Standard error of the per-class mean over seeds (0 with one seed: no spread is known)."""
    if table.shape[0] < 2:
        return np.zeros(table.shape[1])
    return np.nanstd(table, axis=0, ddof=1) / np.sqrt(table.shape[0])


def _save(fig: plt.Figure, ax: plt.Axes, path: Path) -> Path:
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the data, never over it
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_class_deltas(bench: str, student: str, by_method: dict[str, list[dict[str, Any]]], out: Path, slug: str) -> Path | None:
    base = _ious(by_method.get("baseline", []))
    methods = [m for m in _method_order(by_method) if m != "baseline" and _ious(by_method[m]) is not None]
    if base is None or not methods:
        return None
    k = base.shape[1]
    names = CLASS_NAMES.get(bench, [str(i) for i in range(k)])
    if len(names) != k:
        names = [str(i) for i in range(k)]
    x = np.arange(k)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * k + 2), 3.6))
    for i, m in enumerate(methods):
        table = _ious(by_method[m])
        delta = np.nanmean(table, axis=0) - np.nanmean(base, axis=0)
        err = np.sqrt(_sem(table) ** 2 + _sem(base) ** 2)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, delta, width, yerr=err, capsize=2, error_kw={"lw": 0.8},
               label=f"{m} (n={table.shape[0]})", color=_colour_of(m, methods))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, names, rotation=60 if k > 12 else 0, ha="right" if k > 12 else "center")
    ax.set_ylabel("IoU change vs baseline (points)")
    ax.set_title(f"{bench}, {student}: per-class IoU, distilled minus baseline (baseline n={base.shape[0]})\n"
                 "bars: mean over seeds; whiskers: +-1 standard error of the difference", fontsize=9)
    return _save(fig, ax, out / f"{slug}__class_iou_delta.png")


def plot_curves(bench: str, student: str, by_method: dict[str, list[dict[str, Any]]], teacher: list[dict[str, Any]], out: Path,
                slug: str) -> Path | None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    methods = _method_order(by_method)
    for m in methods:
        runs = [r["history"] for r in by_method.get(m, []) if r.get("history")]
        if not runs:
            continue
        steps = sorted({h["step"] for run in runs for h in run})
        table = np.full((len(runs), len(steps)), np.nan)
        for i, run in enumerate(runs):
            for h in run:
                table[i, steps.index(h["step"])] = 100 * h["miou"]
        mean = np.nanmean(table, axis=0)
        colour = _colour_of(m, methods)
        # the baseline is the reference: drawn dashed and on top, so the others cannot hide it
        style = dict(ls="--", lw=2.0, zorder=5) if m == "baseline" else dict(lw=1.4, zorder=3)
        ax.plot(steps, mean, marker="o", ms=3, label=f"{m} (n={len(runs)})", color=colour, **style)
        if len(runs) > 1:
            ax.fill_between(steps, np.nanmin(table, axis=0), np.nanmax(table, axis=0), alpha=0.12, color=colour, zorder=1)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    finals = [100 * r["final_miou"] for r in teacher if r.get("final_miou") is not None]
    if finals:
        ax.axhline(float(np.mean(finals)), ls=":", color=COLOURS["teacher"], label=f"teacher ({teacher[0]['student']})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"{bench}, {student}: validation mIoU")
    return _save(fig, ax, out / f"{slug}__val_miou.png")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none costs at most as much with at least as high a
    score, better in one of the two."""
    front = []
    for i, (c, m) in enumerate(points):
        if not any((c2 <= c and m2 >= m) and (c2 < c or m2 > m) for j, (c2, m2) in enumerate(points) if j != i):
            front.append(i)
    return front


def plot_budgets(bench: str, student: str, rows: Any, out: Path, slug: str) -> Path | None:
    """Best mIoU (mean over seeds) against training cost (mean train seconds; GPU-hours on CUDA), one
    line per method through its budgets (x1 iterations, equal compute, xK), the Pareto front circled.
    rows: the frame's rows of one benchmark and student, every budget."""
    if rows["budget"].nunique() < 2:
        return None
    g = rows.groupby(["method", "budget"], dropna=False).agg(best=("best", "mean"), cost=("train_s", "mean"), n=("best", "count"),
                                                             device=("device", "first")).reset_index()
    g = g.dropna(subset=["best", "cost"])
    if g.empty:
        return None
    gpu = any("cuda" in str(d).lower() or "nvidia" in str(d).lower() or "h100" in str(d).lower() for d in g["device"])
    g["x"] = g["cost"] / 3600 if gpu else g["cost"]
    methods = _method_order(set(g["method"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for m in methods:
        part = g[g["method"] == m].sort_values("x")
        colour = _colour_of(m, methods)
        ax.plot(part["x"], part["best"], marker="o", ms=4, color=colour, label=m, lw=1.2)
        for r in part.itertuples():
            ax.annotate(r.budget.replace(" iterations", "").replace("equal compute", "eq"), (r.x, r.best), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color=colour)
    front = pareto_front(list(zip(g["x"], g["best"])))
    f = g.iloc[front].sort_values("x")
    ax.plot(f["x"], f["best"], ls=":", color="grey", lw=1, zorder=1)
    ax.scatter(f["x"], f["best"], s=110, facecolors="none", edgecolors="black", lw=1, zorder=6, label="Pareto front")
    ax.set_xlabel("training GPU-hours per run" if gpu else "training CPU-seconds per run (evaluations excluded)")
    ax.set_ylabel("best val mIoU (%), mean over seeds")
    ax.set_title(f"{bench}, {student}: mIoU against training cost, per budget", fontsize=9)
    return _save(fig, ax, out / f"{slug}__budgets_pareto.png")


def plot_results(results_dir: str | Path, out_dir: str | Path | None = None, qualitative: bool = False,
                 problems: list[str] | None = None) -> list[Path]:
    """Write the figures under out_dir (default RESULTS_DIR/figures); returns their paths."""
    records = read_records(Path(results_dir), problems)
    by_path = {r["_path"]: r for r in records}
    out = Path(out_dir) if out_dir else Path(results_dir) / "figures"
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    teachers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in frame_of(records, Path(results_dir)).itertuples():
        rec = by_path[row.path]
        if row.method == "teacher":
            teachers[row.benchmark].append(rec)
        else:
            groups[(row.benchmark, row.student, row.protocol)][row.method].append(rec)
    protocols = defaultdict(set)
    for bench, student, protocol in groups:
        protocols[(bench, student)].add(protocol)
    paths = []
    if groups:
        out.mkdir(parents=True, exist_ok=True)
    frame = frame_of(records, Path(results_dir))
    students = frame[frame["method"] != "teacher"]
    for (bench, student), rows in students.groupby(["benchmark", "student"]):
        figure = plot_budgets(bench, student, rows, out, f"{_slug(bench)}__{_slug(student)}")
        if figure is not None:
            paths.append(figure)
    for (bench, student, protocol), by_method in sorted(groups.items()):
        slug = f"{_slug(bench)}__{_slug(student)}" + (f"__{protocol}" if len(protocols[(bench, student)]) > 1 else "")
        figures = [plot_class_deltas(bench, student, by_method, out, slug), plot_curves(bench, student, by_method, teachers[bench], out, slug)]
        if qualitative:
            from .qualitative import plot_qualitative

            figures.append(plot_qualitative(bench, student, {m: by_method[m] for m in _method_order(by_method)},
                                            out, slug))
        paths += [p for p in figures if p is not None]
    return paths
