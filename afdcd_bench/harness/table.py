"""Results tables from run records: pandas for the numbers, rich for the terminal."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..config import load_recipe, run_method
from ..engine.records import read_records

METHOD_ORDER = {"teacher": 0, "baseline": 1, "kd": 2, "afdcd": 3}


def records_frame(results_dir: str | Path) -> pd.DataFrame:
    rows = []
    for rec in read_records(Path(results_dir)):
        rows.append({
            "benchmark": rec["benchmark"],
            "recipe": rec["recipe"],
            "student": rec["student"],
            "method": run_method(rec["recipe"], rec["method"]),
            "seed": rec["seed"],
            "miou": None if rec.get("final_miou") is None else 100 * rec["final_miou"],
            "best_miou": None if rec.get("best_miou") is None else 100 * rec["best_miou"],
            "wall_s": rec.get("wall_seconds"),
            "published": rec.get("published_miou"),
        })
    return pd.DataFrame(rows, columns=["benchmark", "recipe", "student", "method", "seed", "miou", "best_miou", "wall_s", "published"])


COLUMNS = ["benchmark", "student", "method", "miou_mean", "miou_std", "n", "best_mean", "delta", "published", "diff_published", "wall_s"]


def summary(frame: pd.DataFrame, expected: list[tuple[str, str, str, float | None]] | None = None) -> pd.DataFrame:
    """One row per (benchmark, student, method): mean, std, n over seeds; delta vs the baseline.

    expected: (benchmark, student, method, published) of runs that should exist; those without a
    record appear with n = 0 and no mIoU, never as 0.
    """
    if frame.empty and not expected:
        return pd.DataFrame(columns=COLUMNS)
    g = frame.groupby(["benchmark", "student", "method"], dropna=False)
    out = g.agg(miou_mean=("miou", "mean"), miou_std=("miou", "std"), n=("miou", "count"), best_mean=("best_miou", "mean"),
                wall_s=("wall_s", "mean"), published=("published", "first")).reset_index()
    have = set(zip(out["benchmark"], out["student"], out["method"]))
    missing = [dict(benchmark=b, student=s, method=m, n=0, published=p) for b, s, m, p in (expected or []) if (b, s, m) not in have]
    if missing:
        out = pd.concat([out, pd.DataFrame(missing)], ignore_index=True) if not out.empty else pd.DataFrame(missing)
        out["n"] = out["n"].astype(int)
    for col in COLUMNS:
        if col not in out:
            out[col] = math.nan
    base = out[out["method"] == "baseline"].set_index(["benchmark", "student"])["miou_mean"]
    out["delta"] = [
        (r.miou_mean - base.get((r.benchmark, r.student), math.nan)) if r.method not in ("baseline", "teacher") else math.nan
        for r in out.itertuples()
    ]
    out["diff_published"] = out["miou_mean"] - out["published"]
    out["order"] = out["method"].map(lambda m: METHOD_ORDER.get(m, 9))
    out["is_teacher"] = out["method"] != "teacher"
    out = out.sort_values(["benchmark", "is_teacher", "student", "order"]).drop(columns=["order", "is_teacher"]).reset_index(drop=True)
    return out[COLUMNS]


def expected_runs(recipes: list[str] | dict[str, list[str]]) -> list[tuple[str, str, str, float | None]]:
    """(benchmark, student, method, published) that these recipes produce, to mark missing runs.

    A dict maps each recipe to the overrides its runs use (they may change the student).
    """

    overrides = recipes if isinstance(recipes, dict) else {name: [] for name in recipes}
    out = []
    for name, extra in overrides.items():
        cfg = load_recipe(name, extra)
        out.append((cfg.benchmark, f"{cfg.student.arch}-{cfg.student.backbone}", run_method(name, cfg.method.name), cfg.published.miou))
    return out


def _fmt(v: Any, spec: str = ".2f", signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+{spec}}" if signed else f"{v:{spec}}"


def render(table: pd.DataFrame, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 150))
    if table.empty:
        console.print("[yellow]no run records found[/yellow]")
        return
    for bench, part in table.groupby("benchmark", sort=False):
        t = Table(title=f"{bench}: val mIoU (%) measured by this code (final checkpoint; best of the periodic validations beside it)")
        for col in ("student", "method", "mIoU (mean +- std)", "n", "best", "delta vs baseline", "published", "diff vs published", "wall time (s)"):
            t.add_column(col, justify="left" if col in ("student", "method") else "right", no_wrap=True)
        for r in part.itertuples():
            miou = "missing" if r.n == 0 else f"{r.miou_mean:.2f} +- {_fmt(r.miou_std)}"
            t.add_row(r.student, r.method, miou, str(r.n), _fmt(r.best_mean), _fmt(r.delta, signed=True), _fmt(r.published),
                      _fmt(r.diff_published, signed=True), _fmt(r.wall_s, ".0f"))
        console.print(t)


def _latex(table: pd.DataFrame) -> str:
    cols = {"benchmark": "Benchmark", "student": "Student", "method": "Method", "miou": "mIoU (\\%)", "n": "$n$",
            "delta": "$\\Delta$ baseline", "published": "Published", "diff_published": "$\\Delta$ published"}
    rows = pd.DataFrame({
        "benchmark": table["benchmark"].str.replace("_", "\\_"),
        "student": table["student"].str.replace("_", "\\_"),
        "method": table["method"],
        "miou": ["missing" if n == 0 else f"{m:.2f} $\\pm$ {_fmt(sd)}" for m, sd, n in zip(table["miou_mean"], table["miou_std"], table["n"])],
        "n": table["n"].astype(int).astype(str),
        "delta": [_fmt(v, signed=True) for v in table["delta"]],
        "published": [_fmt(v) for v in table["published"]],
        "diff_published": [_fmt(v, signed=True) for v in table["diff_published"]],
    }).rename(columns=cols)
    return rows.style.hide(axis="index").to_latex(hrules=True, column_format="lllrrrrr")


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "table.csv", out_dir / "table.md", out_dir / "table.tex"]
    table.to_csv(paths[0], index=False, float_format="%.2f")
    paths[1].write_text(table.to_markdown(index=False, floatfmt=".2f") + "\n")
    paths[2].write_text(_latex(table))
    return paths
