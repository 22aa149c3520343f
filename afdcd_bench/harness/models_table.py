"""`afdcd-bench models`: size of every teacher and student the recipes use, at their crop sizes."""
from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..config import is_teacher_recipe, list_recipes, load_recipe
from ..methods import stage_of
from ..models.complexity import model_complexity


def recipe_models(size: tuple[int, int] | None = None) -> list[tuple[str, str, str, int, tuple[int, int], bool | None, int | None]]:
    """Unique (benchmark, role, arch, backbone, classes, size, aux, width) the recipes build.

    A teacher is taken from its own recipe; a student recipe's teacher section only where the
    benchmark has no teacher recipe.
    """
    names = list_recipes()
    seen, out = set(), []
    for name in names:
        cfg = load_recipe(name)
        crop = size or tuple(cfg.data.crop_size)
        if stage_of(cfg.method.name):  # learnt on the teacher alone: no network of its own
            continue
        role = "teacher" if is_teacher_recipe(name) else "student"
        nets = [(role, cfg.student)]
        if cfg.teacher is not None and role == "student" and cfg.teacher.recipe not in names:
            nets.append(("teacher", cfg.teacher))
        for r, m in nets:
            key = (cfg.benchmark, r, m.arch, m.backbone, cfg.num_classes, crop, m.aux, m.head_width)
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def models_frame(size: tuple[int, int] | None = None) -> pd.DataFrame:
    rows = []
    for bench, role, arch, backbone, classes, crop, aux, width in recipe_models(size):
        c = model_complexity(arch, backbone, classes, crop, aux=aux, head_width=width)
        rows.append({"benchmark": bench, "role": role, **c,
                     "printed_over_true": c["gmacs_printed_style"] / c["gmacs"] if c["gmacs"] else float("nan")})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.drop_duplicates(subset=["benchmark", "model", "input"]).reset_index(drop=True)
    return frame


def render_models(frame: pd.DataFrame, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 132))
    table = Table(title="Models: params and multiply-adds (batch 1, aux head included)")
    for col in ("benchmark", "role", "model", "input", "params (M)", "GMACs", "GMACs, papers' counter", "ratio"):
        table.add_column(col, justify="right" if col not in ("benchmark", "role", "model") else "left")
    for r in frame.itertuples():
        table.add_row(r.benchmark, r.role, r.model, r.input, f"{r.params_m:.2f}", f"{r.gmacs:.1f}",
                      f"{r.gmacs_printed_style:.1f}", f"{r.printed_over_true:.3f}")
    console.print(table)
    console.print(
        "GMACs are true multiply-adds (torch.utils.flop_counter). The papers' counter sizes every conv's output "
        "as if dilation were 1, so dilated convs are over-counted: at 1024x2048 it prints 2371.7 / 572.0 / 128.9 "
        "for DeepLabV3-R101 / R18 / MBV2, reproduced by the last column (`--size 1024x2048`). It counts convs and "
        "linear layers only, so for SegFormer it leaves attention's matrix products out (its figure is the lower one)."
    )
