"""Results tables from run records: pandas for the numbers, rich for the terminal."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..config import load_recipe, run_method, to_dict
from ..config.runs import record_settings
from ..engine.records import read_records

METHOD_ORDER = {"teacher": 0, "baseline": 1, "kd": 2, "afdcd": 3}


def _settings_ids(config: dict[str, Any]) -> tuple[str, str]:
    """(settings, protocol) short ids of a run's config: settings = everything that changes what the
    run computes except its seed (runs with equal settings are seeds of one experiment); protocol =
    that without the method and the teacher (a distilled run's baseline shares its protocol)."""
    body = record_settings(config)
    body.get("train", {}).pop("seed", None)
    protocol = {k: v for k, v in body.items() if k not in ("method", "teacher")}
    digest = lambda obj: hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]  # noqa: E731
    return digest(body), digest(protocol)


FRAME_COLUMNS = ["benchmark", "recipe", "student", "method", "seed", "miou", "best_miou", "wall_s", "published", "settings",
                 "protocol", "folder", "path"]


def records_frame(results_dir: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per valid record under results_dir. Bad records are named in `problems`; without a
    list, the first bad record raises RecordError."""
    return frame_of(read_records(Path(results_dir), problems), Path(results_dir))


def frame_of(records: list[dict[str, Any]], root: Path) -> pd.DataFrame:
    rows = []
    for rec in records:
        sid, pid = _settings_ids(rec["config"])
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
            "settings": sid,
            "protocol": pid,
            "folder": Path(rec["_path"]).parent.relative_to(root).as_posix(),
            "path": rec["_path"],
        })
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


COLUMNS = ["benchmark", "student", "method", "miou_mean", "miou_std", "n", "best_mean", "delta", "published", "diff_published",
           "wall_s", "settings", "folder"]
KEY = ["benchmark", "student", "method", "settings"]


def summary(frame: pd.DataFrame, expected: list[tuple[str, str, str, float | None, str | None]] | None = None) -> pd.DataFrame:
    """One row per experiment (benchmark, student, method and settings): mean, std, n over seeds;
    delta vs the baseline run under the same protocol. Runs that differ in any setting (a quick
    schedule, another lr) are separate rows, never averaged together.

    expected: (benchmark, student, method, published, settings id or None) of runs that should
    exist; those without a record appear with n = 0 and no mIoU, never as 0. Without a settings id
    an entry counts as present when any run of its (benchmark, student, method) is.
    """
    if frame.empty and not expected:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame(columns=[*KEY, "protocol"])
    if not frame.empty:
        g = frame.groupby(KEY, dropna=False)
        out = g.agg(miou_mean=("miou", "mean"), miou_std=("miou", "std"), n=("miou", "count"), best_mean=("best_miou", "mean"),
                    wall_s=("wall_s", "mean"), published=("published", "first"), protocol=("protocol", "first"),
                    folder=("folder", lambda f: ", ".join(sorted(set(f))))).reset_index()
    have = set(zip(out["benchmark"], out["student"], out["method"], out["settings"]))
    triples = {k[:3] for k in have}
    missing = [dict(benchmark=b, student=st, method=m, n=0, published=p, settings=sid) for b, st, m, p, sid in (expected or [])
               if ((b, st, m, sid) not in have if sid else (b, st, m) not in triples)]
    if missing:
        out = pd.concat([out, pd.DataFrame(missing)], ignore_index=True) if not out.empty else pd.DataFrame(missing)
        out["n"] = out["n"].astype(int)
    for col in [*COLUMNS, "protocol"]:
        if col not in out:
            out[col] = math.nan
    baselines = out[(out["method"] == "baseline") & (out["n"] > 0)].groupby(["benchmark", "student", "protocol"])["miou_mean"]
    base = baselines.first()[baselines.count() == 1]  # two baselines under one protocol: no delta rather than a guess
    out["delta"] = [
        (r.miou_mean - base.get((r.benchmark, r.student, r.protocol), math.nan)) if r.method not in ("baseline", "teacher") else math.nan
        for r in out.itertuples()
    ]
    out["diff_published"] = out["miou_mean"] - out["published"]
    out["order"] = out["method"].map(lambda m: METHOD_ORDER.get(m, 9))
    out["is_teacher"] = out["method"] != "teacher"
    out = out.sort_values(["benchmark", "is_teacher", "student", "order", "settings"]).drop(columns=["order", "is_teacher"]).reset_index(drop=True)
    return out[COLUMNS]


def expected_runs(recipes: list[str] | dict[str, list[str]], with_settings: bool = False) -> list[tuple[str, str, str, float | None, str | None]]:
    """(benchmark, student, method, published, settings id) that these recipes produce, to mark missing runs.

    A dict maps each recipe to the overrides its runs use (they may change the student);
    with_settings: match records by their settings too (reproduce knows exactly what it ran).
    """

    overrides = recipes if isinstance(recipes, dict) else {name: [] for name in recipes}
    out = []
    for name, extra in overrides.items():
        cfg = load_recipe(name, extra)
        sid = _settings_ids(to_dict(cfg))[0] if with_settings else None
        out.append((cfg.benchmark, f"{cfg.student.arch}-{cfg.student.backbone}", run_method(name, cfg.method.name), cfg.published.miou, sid))
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
        # several experiments of one method (other settings): say which rows are which
        split = part.duplicated(["student", "method"], keep=False).any()
        t = Table(title=f"{bench}: val mIoU (%) measured by this code (final checkpoint; best of the periodic validations beside it)")
        cols = ["student", "method", "mIoU (mean +- std)", "n", "best", "delta vs baseline", "published", "diff vs published", "wall time (s)"]
        for col in cols + (["settings", "folder"] if split else []):
            t.add_column(col, justify="left" if col in ("student", "method", "settings", "folder") else "right", no_wrap=True)
        for r in part.itertuples():
            miou = "missing" if r.n == 0 else f"{r.miou_mean:.2f} +- {_fmt(r.miou_std)}"
            row = [r.student, r.method, miou, str(r.n), _fmt(r.best_mean), _fmt(r.delta, signed=True), _fmt(r.published),
                   _fmt(r.diff_published, signed=True), _fmt(r.wall_s, ".0f")]
            t.add_row(*row, *([str(r.settings), "" if not isinstance(r.folder, str) else r.folder] if split else []))
        console.print(t)
        if split:
            console.print("[yellow]rows of one method with other settings are separate experiments (settings = a hash of the "
                          "resolved config without seed and locations)[/yellow]")


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
