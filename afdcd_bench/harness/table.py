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
from .budget import budget_label
from ..engine.identity import launch, planned_identity, record_identity, single_process_launch
from ..engine.records import RecordError, read_records
from ..methods import stage_of

# Rows: the teacher, the baseline, then every other method by name, the suite's own (Af-DCD) last as
# in the paper's tables. Methods come from the records; none is left out for its name.
METHOD_ORDER = {"teacher": 0, "baseline": 1, "afdcd": 3}
TEST_SERVER_MARK = "†"  # a published number on Cityscapes' test server (recipes' published.split)


def _on_test_server(row: Any) -> bool:
    return row.get("published_split") == "test-server" if hasattr(row, "get") else False


def _ids(identity: dict[str, Any]) -> tuple[str, str]:
    """(settings, protocol) short ids of a run's identity (engine/identity.py): settings = everything
    that changes what the run computes except its seed (the config, the content of its teacher and
    stage files, the launch: runs with equal settings are seeds of one experiment); protocol = that
    without the method, the teacher and its files (a distilled run's baseline shares its protocol)."""
    body = json.loads(json.dumps(identity, default=str))
    body.get("train", {}).pop("seed", None)
    protocol = json.loads(json.dumps({k: v for k, v in body.items() if k not in ("method", "teacher", "inputs")}))
    if (protocol.get("budget") or {}).get("kind") == "compute":
        # equal compute: each method's count is its own (its cost's); the budget they share is the protocol
        for key in ("iterations", "val_interval"):
            protocol.get("train", {}).pop(key, None)
        for key in ("cost_ms", "recipe_iterations"):
            protocol["budget"].pop(key, None)
    digest = lambda obj: hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]  # noqa: E731
    return digest(body), digest(protocol)


def launch_label(launch: dict[str, int]) -> str:
    """processes x per-device batch, with the accumulation where there is one: 1x16, 2x4 (x2 accum)."""
    accum = launch.get("grad_accumulation", 1)
    return f"{launch.get('num_processes')}x{launch.get('per_device_batch')}" + (f" (x{accum} accum)" if accum != 1 else "")


class DuplicateRuns(RecordError):
    """Two record files of one run (recipe, seed and settings) that say different things."""


def _distinct_runs(records: list[dict[str, Any]], problems: list[str] | None) -> list[dict[str, Any]]:
    """One record per run: a run found twice (a copied folder) counts once, and two different records
    of one run are refused, naming both files (a table must not average a run with itself)."""
    seen: dict[tuple[str, int, str], dict[str, Any]] = {}
    out = []
    for rec in records:
        key = (rec["recipe"], rec["seed"], _ids(record_identity(rec))[0])
        first = seen.get(key)
        if first is None:
            seen[key] = rec
            out.append(rec)
            continue
        facts = lambda r: {k: v for k, v in r.items() if k not in ("_path", "record_path")}  # noqa: E731
        if json.dumps(facts(first), sort_keys=True, default=str) != json.dumps(facts(rec), sort_keys=True, default=str):
            raise DuplicateRuns(f"{first['_path']} and {rec['_path']} are two different records of one run ({rec['recipe']} seed "
                                f"{rec['seed']}, same settings): keep one of them, or move one to another results folder")
        if problems is not None:
            problems.append(f"{rec['_path']}: the same run as {first['_path']} (identical record), counted once")
    return out


FRAME_COLUMNS = ["benchmark", "recipe", "student", "method", "base_method", "seed", "best", "final", "best_on_test", "wall_s",
                 "train_s", "img_s", "data_wait", "peak_mb", "device", "launch", "budget", "iterations",
                 "published", "selected_on", "published_split", "precision", "split", "ablation_of", "settings", "protocol", "folder", "path"]


def records_frame(results_dir: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per valid record under results_dir. Bad records are named in `problems`; without a
    list, the first bad record raises RecordError."""
    return frame_of(_distinct_runs(read_records(Path(results_dir), problems), problems), Path(results_dir))


def method_label(recipe: str, method: str) -> str:
    """"afdcd" for the main recipe of a method, "afdcd (fd_only)" for a variant or an ablation."""
    base = run_method(recipe, method)
    variant = recipe.rsplit("/", 1)[-1]
    return base if variant in (base, base.split("+")[0], "teacher") else f"{base} ({variant})"


SCHEDULE_KEYS = (("train", "iterations"), ("train", "effective_batch"), ("train", "lr"), ("data", "crop_size"))


def published_schedule(rec: dict[str, Any]) -> bool:
    """Whether the run trained the schedule of its recipe's published number (iterations, batch, lr,
    crop, and the recipe's own budget): only such a run is compared with that number (a smoke run or
    a budget is not)."""
    try:
        recipe = to_dict(load_recipe(rec["recipe"]))
    except Exception:  # the recipe is gone or changed shape: nothing to say the schedule was the published one
        return False
    cfg = rec.get("config") or {}
    if cfg.get("budget") not in (None, recipe.get("budget")):
        return False
    return all((cfg.get(a) or {}).get(b) == (recipe.get(a) or {}).get(b) for a, b in SCHEDULE_KEYS)


def _points(value: Any) -> float | None:
    return None if value is None else 100 * value


def _precision(mixed_precision: str | None) -> str | None:
    return "fp32" if mixed_precision == "no" else mixed_precision


def frame_of(records: list[dict[str, Any]], root: Path) -> pd.DataFrame:
    """best/final: the reported split's scores (test where a record has a test split, selected on
    val), best_on_test: the best test score over validations (a selection on test itself)."""
    rows = []
    for rec in records:
        if rec.get("stage_of"):  # a teacher-side stage (MasKD's tokens), not a student
            continue
        identity = record_identity(rec)
        sid, pid = _ids(identity)
        tested = rec.get("test_split") is not None
        cfg = rec["config"]
        rows.append({
            "benchmark": rec["benchmark"],
            "recipe": rec["recipe"],
            "student": rec["student"],
            "method": method_label(rec["recipe"], rec["method"]),
            "base_method": run_method(rec["recipe"], rec["method"]),
            "seed": rec["seed"],
            "best": _points(rec.get("test_miou_at_best") if tested else rec.get("best_miou")),
            "final": _points(rec.get("final_test_miou") if tested else rec.get("final_miou")),
            "best_on_test": _points(rec.get("best_test_miou")),
            "wall_s": rec.get("wall_seconds"),
            "train_s": rec.get("train_seconds"),  # training time without evaluations: the cost a budget equalises
            "img_s": rec.get("images_per_second"),  # training images per second, evaluations excluded
            "data_wait": rec.get("data_wait_share"),  # the share of the training seconds spent waiting for batches
            "budget": budget_label(cfg.get("budget")),
            "iterations": (cfg.get("train") or {}).get("iterations"),
            "peak_mb": rec.get("peak_memory_mb"),
            "device": rec.get("device"),
            "launch": launch_label(identity["launch"]),
            "published": rec.get("published_miou") if rec.get("published_miou") is None or published_schedule(rec) else None,
            "selected_on": (cfg.get("published") or {}).get("selected_on", "val"),
            "published_split": (cfg.get("published") or {}).get("split", "val"),
            "precision": _precision((cfg.get("train") or {}).get("mixed_precision")),
            "split": rec.get("test_split") or (cfg.get("data") or {}).get("val_split"),
            "ablation_of": cfg.get("ablation_of"),
            "settings": sid,
            "protocol": pid,
            "folder": Path(rec["_path"]).parent.relative_to(root).as_posix(),
            "path": rec["_path"],
        })
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


COLUMNS = ["benchmark", "student", "method", "budget", "best_mean", "best_std", "final_mean", "final_std", "n", "delta_best",
           "delta_final", "vs_main", "best_on_test", "published", "released", "selected_on", "published_split", "diff_published", "precision",
           "split", "iterations",
           "wall_s", "train_s", "compute_vs_ref", "img_s", "data_wait", "peak_mb", "device", "launch", "settings",
           "folder", "recipe"]
KEY = ["benchmark", "student", "method", "settings"]


def method_rank(method: str) -> tuple[int, str]:
    """Where a method label sorts: teacher, baseline, others by name, afdcd; a variant beside its method."""
    return METHOD_ORDER.get(method.split(" ")[0], 2), method


def summary(frame: pd.DataFrame, expected: list[tuple] | None = None) -> pd.DataFrame:
    """One row per experiment (benchmark, student, method and settings): mean, std, n over seeds of
    the best-of-validations score (what papers publish) and of the final checkpoint's; deltas vs the
    baseline under the same protocol; an ablation's change vs its main recipe. Runs that differ in
    any setting (a quick schedule, another lr) are separate rows, never averaged together.

    expected: (benchmark, student, method label, published, settings id or None[, budget label]) of runs
    that should exist; those without a record appear with n = 0 and no mIoU, never as 0. Without a settings id
    an entry counts as present when any run of its (benchmark, student, method) is.
    """
    if frame.empty and not expected:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame(columns=[*KEY, "protocol"])
    if not frame.empty:
        g = frame.groupby(KEY, dropna=False)
        out = g.agg(best_mean=("best", "mean"), best_std=("best", "std"), final_mean=("final", "mean"), final_std=("final", "std"),
                    n=("final", "count"), best_on_test=("best_on_test", "mean"), wall_s=("wall_s", "mean"),
                    img_s=("img_s", "mean"), train_s=("train_s", "mean"), data_wait=("data_wait", "mean"), budget=("budget", "first"),
                    iterations=("iterations", "first"), peak_mb=("peak_mb", "max"), device=("device", lambda d: ", ".join(sorted({str(x) for x in d if x}))),
                    published=("published", "first"), selected_on=("selected_on", "first"), precision=("precision", "first"),
                    published_split=("published_split", "first"),
                    split=("split", "first"), launch=("launch", "first"), ablation_of=("ablation_of", "first"), recipe=("recipe", "first"),
                    protocol=("protocol", "first"), folder=("folder", lambda f: ", ".join(sorted(set(f))))).reset_index()
    have = set(zip(out["benchmark"], out["student"], out["method"], out["settings"]))
    triples = {k[:3] for k in have}
    missing = [dict(benchmark=b, student=st, method=m, n=0, published=p, settings=sid, budget=(rest or ["x1 iterations"])[0],
                    published_split=rest[1] if len(rest) > 1 else "val")
               for b, st, m, p, sid, *rest in (expected or []) if ((b, st, m, sid) not in have if sid else (b, st, m) not in triples)]
    if missing:
        out = pd.concat([out, pd.DataFrame(missing)], ignore_index=True) if not out.empty else pd.DataFrame(missing)
        out["n"] = out["n"].astype(int)
    for col in [*COLUMNS, "protocol", "ablation_of"]:
        if col not in out:
            out[col] = math.nan
    present = out[out["n"] > 0]
    base = present[present["method"] == "baseline"].groupby(["benchmark", "student", "protocol"])
    one = base["final_mean"].count() == 1  # two baselines under one protocol: no delta rather than a guess
    base_best, base_final = base["best_mean"].first()[one], base["final_mean"].first()[one]
    mains = {(r.recipe, r.protocol): r.best_mean for r in present.itertuples()}
    deltas_best, deltas_final, vs_main = [], [], []
    for r in out.itertuples():
        key = (r.benchmark, r.student, r.protocol)
        distilled = r.method not in ("baseline", "teacher")
        deltas_best.append(r.best_mean - base_best.get(key, math.nan) if distilled else math.nan)
        deltas_final.append(r.final_mean - base_final.get(key, math.nan) if distilled else math.nan)
        vs_main.append(r.best_mean - mains.get((r.ablation_of, r.protocol), math.nan) if isinstance(r.ablation_of, str) else math.nan)
    out["delta_best"], out["delta_final"], out["vs_main"] = deltas_best, deltas_final, vs_main
    reference = [t if s == "test" else b for b, t, s in zip(out["best_mean"], out["best_on_test"], out["selected_on"])]
    out["diff_published"] = pd.Series(reference, index=out.index, dtype=float) - out["published"].astype(float)
    if "published_split" in out:  # a test-server number is no reference for a val measurement
        out.loc[out["published_split"].fillna("val") == "test-server", "diff_published"] = float("nan")
    out["order"] = out["method"].map(lambda m: method_rank(m)[0])
    out["is_teacher"] = out["method"] != "teacher"
    out["compute_vs_ref"] = achieved_compute(out)
    out["budget_order"] = out["budget"].map(lambda b: (0 if str(b).startswith("x1 ") else 1, str(b)))
    out = out.sort_values(["benchmark", "is_teacher", "student", "order", "method", "budget_order", "settings"]).reset_index(drop=True)
    return out[COLUMNS]


def expected_runs(recipes: list[str] | dict[str, list[str]] | list[tuple[str, list[str]]], with_settings: bool = False,
                  processes: int = 1) -> list[tuple[str, str, str, float | None, str | None, str]]:
    """(benchmark, student, method label, published, settings id, budget label) these recipes produce, to mark missing runs.

    A dict (or (recipe, overrides) pairs, one recipe under several budgets) gives the overrides its
    runs use (they may change the student);
    with_settings: match records by their settings too (reproduce knows exactly what it ran).
    """

    if isinstance(recipes, dict):
        pairs = list(recipes.items())
    else:
        pairs = [r if isinstance(r, tuple) else (r, []) for r in recipes]
    out = []
    for name, extra in pairs:
        cfg = load_recipe(name, extra)
        if stage_of(cfg.method.name):  # a stage learnt on the teacher (MasKD's tokens): no row of its own
            continue
        run_launch = launch(processes, cfg.train.effective_batch // processes, 1) if processes > 1 else single_process_launch(cfg)
        sid = _ids(planned_identity(cfg, run_launch))[0] if with_settings else None
        out.append((cfg.benchmark, f"{cfg.student.arch}-{cfg.student.backbone}", method_label(name, cfg.method.name), cfg.published.miou, sid,
                    budget_label(to_dict(cfg).get("budget")), cfg.published.split))
    return out


def _fmt(v: Any, spec: str = ".2f", signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+{spec}}" if signed else f"{v:{spec}}"


def _mean_std(mean: Any, std: Any, n: int) -> str:
    return "missing" if n == 0 else f"{_fmt(mean)} +- {_fmt(std)}"


def _present(part: pd.DataFrame, col: str) -> bool:
    return bool(part[col].notna().any())


COMPUTE_TOLERANCE = 0.10  # an equal-compute row whose training seconds are further than this from its reference's is flagged


def achieved_compute(out: pd.DataFrame) -> list[float]:
    """Per row of an equal-compute budget, its measured training seconds over those of the budget's
    reference (same benchmark, student and budget; NaN elsewhere): what the budget achieved, which a
    noisy or foreign cost measurement can miss."""
    ref_s = {}
    for r in out.itertuples():
        label = str(r.budget)
        if label.startswith("equal compute (") and isinstance(r.recipe, str) and r.n > 0:
            ref = label[len("equal compute ("):].split(")", 1)[0]
            if r.recipe.rsplit("/", 1)[-1] == ref or r.method == ref:
                ref_s[(r.benchmark, r.student, label)] = r.train_s
    return [r.train_s / ref_s[(r.benchmark, r.student, str(r.budget))]
            if (r.benchmark, r.student, str(r.budget)) in ref_s and r.n > 0 and r.train_s == r.train_s else math.nan
            for r in out.itertuples()]


def compute_cell(ratio: Any) -> str:
    """x1.03, or x1.70 ! where the run missed the reference's compute by more than the tolerance."""
    if ratio is None or ratio != ratio:
        return ""
    return f"x{ratio:.2f}" + (" !" if abs(ratio - 1) > COMPUTE_TOLERANCE else "")


def render(table: pd.DataFrame, console: Console | None = None) -> None:
    """One rich table per benchmark and student (the student in the title keeps the columns narrow)."""
    console = console or Console(width=max(Console().width, 150))
    if table.empty:
        console.print("[yellow]no run records found[/yellow]")
        return
    for bench, by_bench in table.groupby("benchmark", sort=False):
        splits = ", ".join(sorted({str(s) for s in by_bench["split"].dropna()})) or "val"
        console.print(f"[bold]{bench}[/bold]: mIoU (%) on {splits}, measured by this code. best = best of the periodic "
                      "validations (what papers publish; compared with the published number), final = the last checkpoint "
                      "(unselected); mean +- std over seeds; deltas vs the baseline of the same protocol.", soft_wrap=True)
        notes = set()
        for student, part in by_bench.groupby("student", sort=False):
            split = part.duplicated(["method", "budget"], keep=False).any()  # several experiments of one method: say which is which
            budgets = part["budget"].nunique() > 1
            cols = [("method", "method")] + ([("budget", "budget"), ("steps", "iterations")] if budgets else [])
            cols += [("best", None), ("final", None), ("n", None), ("d best", "delta_best"), ("d final", "delta_final")]
            if budgets:
                notes.add("budget: x1 iterations = each recipe's own schedule (the papers' protocol); equal compute (REF) = "
                          "each run trained for REF's iterations x REF's cost per step / its own cost; deltas are against the "
                          "baseline of the same budget (docs/equal_compute.md)")
            if _present(part, "vs_main"):
                cols.append(("vs main", "vs_main"))
                notes.add("vs main: best minus the best of the recipe it varies (ablations and variants; none were published)")
            if _present(part, "best_on_test"):
                cols.append(("best on test", "best_on_test"))
                notes.add("best on test: the best test score over the validations, the selection the released Af-DCD CamVid "
                          "script made; published numbers marked * were selected that way and are compared with it")
            if _present(part, "published"):
                cols += [("published", "published"), ("best-pub", "diff_published")]
                if any(_on_test_server(r) for _, r in part.iterrows() if r["published"] == r["published"]):
                    notes.add(f"published numbers marked {TEST_SERVER_MARK} are on Cityscapes' test server (1525 test images), "
                              "not on the val split measured here: no best-pub is given beside them")
            if _present(part, "released"):
                cols.append(("released (measured)", "released"))
                notes.add("released (measured): the authors' released checkpoint of that network and method, scored by this "
                          "code's evaluator on the same split (afdcd-bench score-released)")
            cols += [("prec", "precision"), ("wall s", "wall_s")]
            cols += [("train s", "train_s")] if budgets else []
            if _present(part, "compute_vs_ref"):
                cols.append(("compute", "compute_vs_ref"))
                notes.add(f"compute: an equal-compute run's training seconds over its reference's, as achieved (train s, "
                          f"evaluations excluded); ! marks a run more than {100 * COMPUTE_TOLERANCE:.0f}% off, whose budget "
                          "was not equal in fact (costs measured on a busy machine, or on other threads or another device)")
            cols += [("img/s", "img_s")]
            if _present(part, "data_wait"):
                cols.append(("data wait", "data_wait"))
                notes.add("data wait: the share of the training seconds the loop spent waiting for its batches; well above "
                          "a few % the loader does not keep up and the device waits (more data.num_workers, or the decoded "
                          "cache: `afdcd-bench data cache`)")
            if _present(part, "peak_mb"):
                cols.append(("peak MB", "peak_mb"))
            notes.add("cost as measured: wall s = the whole run, img/s = training images per second without evaluations, "
                      "peak MB = the GPU's peak allocated memory (on CPU the process's peak resident size, which in the "
                      "in-process demo carries over from run to run); compare costs only between runs on one device")
            if split:
                cols += [("launch", "launch"), ("settings", "settings"), ("folder", "folder")]
                notes.add("rows of one method with other settings are separate experiments (settings: a hash of the resolved "
                          "config without seed and locations, of the teacher's and stage files' content, and of the launch: "
                          "processes x per-device batch)")
            t = Table(title=f"{bench}, {student}", title_justify="left")
            for title, _ in cols:
                t.add_column(title, justify="left" if title in ("method", "budget", "settings", "folder", "prec", "launch") else "right",
                             no_wrap=True)
            for r in part.to_dict("records"):
                cells = []
                for title, key in cols:
                    if title == "best":
                        cells.append(_mean_std(r["best_mean"], r["best_std"], r["n"]))
                    elif title == "final":
                        cells.append(_mean_std(r["final_mean"], r["final_std"], r["n"]))
                    elif title == "n":
                        cells.append(str(r["n"]))
                    elif key in ("delta_best", "delta_final", "vs_main", "diff_published"):
                        cells.append(_fmt(r[key], signed=True))
                    elif key in ("wall_s", "peak_mb", "train_s"):
                        cells.append(_fmt(r[key], ".0f"))
                    elif key == "iterations":
                        cells.append(_fmt(r[key], ".0f"))
                    elif key == "compute_vs_ref":
                        cells.append(compute_cell(r[key]))
                    elif key == "data_wait":
                        cells.append("" if r[key] != r[key] or r[key] is None else f"{100 * r[key]:.0f}%")
                    elif key == "img_s":
                        cells.append(_fmt(r[key], ".1f"))
                    elif key in ("published", "best_on_test", "released"):
                        cells.append(_fmt(r[key]) + ("*" if key == "published" and r["selected_on"] == "test" else "")
                                     + (TEST_SERVER_MARK if key == "published" and _on_test_server(r) else ""))
                    else:
                        cells.append("" if not isinstance(r[key], str) else r[key])
                t.add_row(*cells)
            console.print(t)
        for note in sorted(notes):
            console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)
    compared = budget_comparison(table)
    if not compared.empty:
        t = Table(title="budgets side by side: best mIoU (delta vs the baseline of the same budget) [training steps] "
                        "{training seconds over the reference's}", title_justify="left")
        for col in compared.columns:
            t.add_column(col, justify="left" if col in ("benchmark", "student", "method") else "right", no_wrap=True)
        for row in compared.itertuples(index=False):
            t.add_row(*[str(v) for v in row])
        console.print(t)


def budget_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark, student and method, one column per budget: "best (delta) [steps]", and for equal
    compute "{x1.03}", the training seconds achieved over the reference's (! beyond the tolerance).
    Empty when the table holds one budget only. The teacher is left out."""
    rows = table[(table["n"] > 0) & (table["method"] != "teacher")]
    if rows.empty or rows["budget"].nunique() < 2:
        return pd.DataFrame()
    order = sorted(rows["budget"].unique(), key=lambda b: (not b.startswith("x1 "), b))
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in rows.itertuples():
        cell = f"{_fmt(r.best_mean)} ({_fmt(r.delta_best, signed=True)}) [{_fmt(r.iterations, '.0f')}]"
        if compute_cell(r.compute_vs_ref):
            cell += f" {{{compute_cell(r.compute_vs_ref)}}}"
        cells.setdefault((r.benchmark, r.student, r.method), {})[r.budget] = cell
    out = [{"benchmark": b, "student": st, "method": m, **{k: v.get(k, "-") for k in order}} for (b, st, m), v in cells.items()]
    frame = pd.DataFrame(out)
    frame["_rank"] = frame["method"].map(method_rank)
    return frame.sort_values(["benchmark", "student", "_rank"]).drop(columns="_rank").reset_index(drop=True)


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "table.csv", out_dir / "table.md", out_dir / "table.tex"]
    from .paper_table import to_latex, to_markdown

    table.to_csv(paths[0], index=False, float_format="%.2f")  # the full frame
    paths[1].write_text(to_markdown(table))  # what a paper or a README takes (harness/paper_table.py)
    paths[2].write_text(to_latex(table))
    compared = budget_comparison(table)
    if not compared.empty:
        paths.append(out_dir / "budgets.md")
        paths[-1].write_text(compared.to_markdown(index=False) + "\n")
    return paths
