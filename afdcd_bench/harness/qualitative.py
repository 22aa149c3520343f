"""`afdcd-bench plot --qualitative`: fixed validation images, their ground truth, and what the
baseline and each distilled student of a pair predict, in the benchmark's palette.

Models come from the records' final checkpoints (the checkpoint the table's mIoU is of), the
lowest seed of each method. The images are evenly spaced over the validation list, so every
figure of a benchmark shows the same ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..config import project_root  # noqa: E402
from ..config.runs import resolve_recorded  # noqa: E402
from ..config.schema import EvalConfig, from_dict  # noqa: E402
from ..data import build_dataset, resolve_root  # noqa: E402
from ..data.batches import model_inputs, one_batch  # noqa: E402
from ..engine.identity import file_sha256  # noqa: E402
from ..engine.provenance import CheckpointMismatch  # noqa: E402
from ..engine.inference import predict  # noqa: E402
from ..engine.predictions import palette  # noqa: E402
from ..models import load_segmentor  # noqa: E402


def pick_indices(length: int, count: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, length - 1, num=min(count, length))})


def _colour(label: np.ndarray, pal: np.ndarray) -> np.ndarray:
    return pal[label.astype(np.uint8)]


def class_key(bench: str, classes: list[int], pal: np.ndarray) -> list[Any]:
    """A colour patch and name for each class drawn (the benchmark's names from plots.CLASS_NAMES)."""
    from matplotlib.patches import Patch

    from .plots import CLASS_NAMES

    names = CLASS_NAMES.get(bench, [])
    return [Patch(facecolor=pal[c] / 255.0, edgecolor="0.6", linewidth=0.4, label=names[c] if c < len(names) else str(c))
            for c in classes]


def _row_label(name: str) -> str:
    """An image's name short enough to read beside its row (Cityscapes': city_seq_frame_leftImg8bit)."""
    name = name.removesuffix("_leftImg8bit")
    return name if len(name) <= 24 else "..." + name[-21:]


def check_checkpoints(records: dict[str, dict[str, Any]], checkpoints: dict[str, Path]) -> set[str]:
    """Refuse a checkpoint whose content is not the record's (the run folder was trained again since);
    returns the methods whose records predate checkpoint hashes (drawn, marked unverified)."""
    unverified = set()
    for m, rec in records.items():
        want = rec.get("checkpoint_sha256")
        if want is None:
            unverified.add(m)
        elif file_sha256(checkpoints[m]) != want:
            raise CheckpointMismatch(f"{checkpoints[m]} is not the checkpoint that {rec['_path']} was measured on (its sha256 "
                                     "differs: that run folder was trained again since); rerun that run, or draw the figure "
                                     "from the records of the run now in that folder")
    return unverified


def plot_qualitative(bench: str, student: str, by_method: dict[str, list[dict[str, Any]]], out: Path, slug: str,
                     images: int = 4) -> Path | None:
    """by_method: records of one pair and protocol, baseline first. None where no checkpoint is found."""
    chosen = {m: min(recs, key=lambda r: r["seed"]) for m, recs in by_method.items() if recs}
    checkpoints = {m: resolve_recorded(r.get("checkpoint") or "", project_root()) for m, r in chosen.items()}
    missing = [str(c) for c in checkpoints.values() if not c.is_file()]
    if not chosen or missing:
        if missing:
            raise FileNotFoundError(f"checkpoint {missing[0]} named by a run record is not there (the run folders were "
                                    "moved or removed): the qualitative figure needs the runs' final checkpoints")
        return None
    unverified = check_checkpoints(chosen, checkpoints)
    cfg = next(iter(chosen.values()))["config"]
    models = {m: load_segmentor(c).eval() for m, c in checkpoints.items()}
    data = cfg["data"]
    ds = build_dataset(data["name"], resolve_root(data["name"], data.get("root")), data.get("val_split", "val"))
    eval_cfg = from_dict(EvalConfig, cfg.get("eval", {}))
    pal = palette(bench).copy()
    pal[255] = (255, 255, 255)  # ignored pixels white: class 0 is black in most palettes
    idx = pick_indices(len(ds), images)
    cols = 2 + len(models)
    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    shown: set[int] = set()  # the classes drawn anywhere in the figure: the key lists those
    for i in idx:
        item = ds[i]
        label = item["label"].numpy()
        shown.update(int(c) for c in np.unique(label) if c != 255)
        panels = [("image", item["image"].permute(1, 2, 0).numpy()), ("ground truth", _colour(label, pal))]
        for m, model in models.items():
            images, _ = model_inputs(one_batch(item), model.build_args["normalization"])
            pred = predict(model, images, eval_cfg).argmax(1)[0].numpy()
            shown.update(int(c) for c in np.unique(pred))
            mark = " [unverified]" if m in unverified else ""
            panels.append((f"{m} (seed {chosen[m]['seed']}){mark}", _colour(pred, pal)))
        rows.append((_row_label(str(item["name"])), panels))
    key = class_key(bench, sorted(shown), pal)
    key_cols = 1 + (len(key) - 1) // 30
    width = 2.2 * cols + 1.6 * key_cols
    fig, axes = plt.subplots(len(idx), cols, figsize=(width, 2.2 * len(idx)), squeeze=False)
    for row, (name, panels) in enumerate(rows):
        for col, (title, img) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row][0].set_ylabel(name, fontsize=8)
    note = "; [unverified]: the record predates checkpoint hashes" if unverified else ""
    fig.suptitle(f"{bench}, {student}: validation images (final checkpoints; white = ignored{note})", fontsize=9)
    fig.legend(handles=key, loc="center right", fontsize=7, title="classes", title_fontsize=8, frameon=False, ncol=key_cols)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 * key_cols / width, 1))  # the key beside the panels, never over them
    path = out / f"{slug}__qualitative.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
