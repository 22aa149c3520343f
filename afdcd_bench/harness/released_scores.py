"""`afdcd-bench score-released BENCHMARK`: the authors' released checkpoints measured by this suite.

"The released weights reach the published number" and "training reaches it" are two claims; this
measures the first: each released teacher and Af-DCD student of the benchmark (fetched by `weights
fetch`) is evaluated with this suite's evaluator and the recipe's protocol (split, scales, flip,
whole or sliding window) and written as a record of kind `afdcd-bench-released` under
`<results>/released/`; `table` shows it as the "released (measured)" column beside the published
number and this suite's own runs.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..config import load_recipe
from ..files import atomic_write
from ..models.fetch import RELEASED, Released, weights_root

KIND = "afdcd-bench-released"
PAIRS = {("deeplabv3", "resnet18_deepstem"): "deeplabv3_resnet18", ("deeplabv3", "mobilenetv2_100"): "deeplabv3_mobilenetv2",
         ("pspnet", "resnet18_deepstem"): "pspnet_resnet18"}


def recipe_of(entry: Released) -> str:
    """The recipe whose protocol (and published number) the released network belongs to."""
    if entry.recipe:
        return entry.recipe
    if entry.kind == "teacher":
        return f"{entry.benchmark}/segformer_mitb4/teacher" if entry.arch == "segformer" else f"{entry.benchmark}/teacher"
    return f"{entry.benchmark}/{PAIRS[(entry.arch, entry.backbone)]}/afdcd"


def score_released(benchmark: str, results_dir: Path, data_root: str | None = None, keys: list[str] | None = None,
                   overrides: list[str] | None = None, log: Callable[[str], None] = print) -> list[Path]:
    from accelerate import Accelerator, DataLoaderConfiguration
    from torch.utils.data import DataLoader

    from ..data import build_dataset, resolve_root
    from ..engine import evaluate
    from ..models import load_segmentor
    from ..models.weights import sha256_file

    entries = [r for r in RELEASED if r.benchmark == benchmark and r.kind != "backbone" and (not keys or r.key in keys)]
    if not entries:
        raise ValueError(f"no released checkpoints of {benchmark!r}{' named ' + ', '.join(keys) if keys else ''}")
    missing = [e for e in entries if not (weights_root() / e.dst).is_file()]
    if missing:
        flags = " ".join(sorted({"--teachers " + benchmark if e.kind == "teacher" else "--released " + benchmark for e in missing}))
        raise FileNotFoundError(f"released checkpoints not fetched yet: {', '.join(str(weights_root() / e.dst) for e in missing)}; "
                                f"`afdcd-bench weights fetch {flags}` gets them")
    out = []
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(even_batches=False))
    for entry in entries:
        recipe = recipe_of(entry)
        cfg = load_recipe(recipe, [*(overrides or []), *([f"data.root={data_root}"] if data_root else [])])
        path = weights_root() / entry.dst
        model = load_segmentor(path)
        if model.num_classes != cfg.num_classes:
            raise ValueError(f"{path} predicts {model.num_classes} classes, {recipe} has {cfg.num_classes}")
        split = cfg.data.test_split or cfg.data.val_split  # the split the published numbers report
        ds = build_dataset(cfg.data.name, resolve_root(cfg.data.name, cfg.data.root), split, cache=cfg.data.cache,
                           cache_dir=cfg.data.cache_dir)
        net, loader = accelerator.prepare(model, DataLoader(ds, batch_size=cfg.eval.batch_size))
        scores = evaluate(net, loader, cfg.num_classes, accelerator, cfg.eval)
        record = {"kind": KIND, "key": entry.key, "benchmark": cfg.benchmark, "recipe": recipe,
                  "student": f"{model.build_args['arch']}-{model.build_args['backbone']}",
                  "method": "teacher" if entry.kind == "teacher" else "afdcd", "split": split, "images": len(ds),
                  "miou": scores["miou"], "pixel_acc": scores["pixel_acc"], "iou": scores["iou"], "published_miou": entry.published,
                  "source": entry.source, "weights": str(path), "weights_sha256": sha256_file(path),
                  "eval": json.loads(json.dumps(cfg.eval.__dict__, default=str)),
                  "measured_at": datetime.datetime.now().isoformat(timespec="seconds")}
        if accelerator.is_main_process:
            dst = Path(results_dir) / "released" / f"{entry.key}.json"
            atomic_write(dst, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
            out.append(dst)
            log(f"{entry.key}: {100 * scores['miou']:.2f} mIoU on {split} ({len(ds)} images), published {entry.published}")
    return out


def released_frame(results_dir: Path) -> pd.DataFrame:
    """(benchmark, student, method, released) of the released records under results_dir, in points."""
    rows: list[dict[str, Any]] = []
    for p in sorted(Path(results_dir).rglob("released/*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") == KIND:
            rows.append({"benchmark": rec["benchmark"], "student": rec["student"], "method": rec["method"],
                         "released": 100 * rec["miou"]})
    return pd.DataFrame(rows, columns=["benchmark", "student", "method", "released"])


def with_released(table: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """table with a `released` column: the measured score of the released checkpoint of the row's
    network and method, where one was scored."""
    released = released_frame(results_dir).drop_duplicates(["benchmark", "student", "method"], keep="last")
    out = table.copy()
    if released.empty:
        out["released"] = float("nan")
        return out
    key = released.set_index(["benchmark", "student", "method"])["released"]
    out["released"] = [key.get((b, s, m), float("nan")) for b, s, m in zip(out["benchmark"], out["student"], out["method"])]
    return out
