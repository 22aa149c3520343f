"""Results tables from run records: pandas for the numbers, rich for the terminal."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..engine.records import read_records

METHOD_ORDER = {"teacher": 0, "baseline": 1, "kd": 2, "afdcd": 3}


def _row_method(rec: dict[str, Any]) -> str:
    # A run that trains the benchmark's teacher network is shown as the teacher.
    return "teacher" if rec["recipe"].endswith("/teacher") else rec["method"]


def records_frame(results_dir: str | Path) -> pd.DataFrame:
    rows = []
    for rec in read_records(Path(results_dir)):
        rows.append({
            "benchmark": rec["benchmark"],
            "recipe": rec["recipe"],
            "student": rec["student"],
            "method": _row_method(rec),
            "seed": rec["seed"],
            "miou": None if rec.get("final_miou") is None else 100 * rec["final_miou"],
            "best_miou": None if rec.get("best_miou") is None else 100 * rec["best_miou"],
            "wall_s": rec.get("wall_seconds"),
            "published": rec.get("published_miou"),
        })
    return pd.DataFrame(rows, columns=["benchmark", "recipe", "student", "method", "seed", "miou", "best_miou", "wall_s", "published"])


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, student, method): mean, std, n over seeds; delta vs the baseline."""
    if frame.empty:
        return pd.DataFrame(columns=["benchmark", "student", "method", "miou_mean", "miou_std", "n", "delta", "published", "diff_published", "wall_s"])
    g = frame.groupby(["benchmark", "student", "method"], dropna=False)
    out = g.agg(miou_mean=("miou", "mean"), miou_std=("miou", "std"), n=("miou", "count"), wall_s=("wall_s", "mean"),
                published=("published", "first")).reset_index()
    base = out[out["method"] == "baseline"].set_index(["benchmark", "student"])["miou_mean"]
    out["delta"] = [
        (r.miou_mean - base.get((r.benchmark, r.student), math.nan)) if r.method not in ("baseline", "teacher") else math.nan
        for r in out.itertuples()
    ]
    out["diff_published"] = out["miou_mean"] - out["published"]
    out["order"] = out["method"].map(lambda m: METHOD_ORDER.get(m, 9))
    out = out.sort_values(["benchmark", "order", "student"]).drop(columns="order").reset_index(drop=True)
    return out[["benchmark", "student", "method", "miou_mean", "miou_std", "n", "delta", "published", "diff_published", "wall_s"]]


def _fmt(v: Any, spec: str = ".2f", signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+{spec}}" if signed else f"{v:{spec}}"


def render(table: pd.DataFrame, console: Console | None = None) -> None:
    console = console or Console()
    if table.empty:
        console.print("[yellow]no run records found[/yellow]")
        return
    for bench, part in table.groupby("benchmark", sort=False):
        t = Table(title=f"{bench}: val mIoU (%) of the final checkpoint, measured by this code")
        for col in ("student", "method", "mIoU (mean +- std)", "n", "delta vs baseline", "published", "diff vs published", "wall time (s)"):
            t.add_column(col, justify="left" if col in ("student", "method") else "right")
        for r in part.itertuples():
            miou = "missing" if r.n == 0 else f"{r.miou_mean:.2f} +- {_fmt(r.miou_std)}"
            t.add_row(r.student, r.method, miou, str(r.n), _fmt(r.delta, signed=True), _fmt(r.published),
                      _fmt(r.diff_published, signed=True), _fmt(r.wall_s, ".0f"))
        console.print(t)


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "table.csv", out_dir / "table.md"]
    table.to_csv(paths[0], index=False, float_format="%.2f")
    paths[1].write_text(table.to_markdown(index=False, floatfmt=".2f") + "\n")
    return paths
