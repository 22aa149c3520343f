"""Where runs live, in one place: the run folder, the teacher's checkpoint, and relative paths.

A run's folder is `<output_dir>/<recipe name>/seed<seed>`. A student's teacher checkpoint,
unless a recipe or the command line names one, is the best checkpoint of its teacher recipe's
run under the same output folder, so overriding `output_dir` moves teacher and students together.
Relative paths written in recipe files are relative to the project (the folder that holds
`recipes/`), whatever the working directory; relative paths given on the command line are
relative to the working directory, as a shell user expects. Both become absolute when loaded.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

# Dotted keys holding filesystem paths.
PATH_KEYS = ("output_dir", "data.root", "student.pretrained", "teacher.pretrained", "teacher.checkpoint",
             "method.maskd.stage_weights")
# Keys that say where things are or how a run reports, not what it computes: a stopped run may
# resume, and a record may stand for a planned run, whatever their values.
LOCATION_KEYS = PATH_KEYS + ("name", "data.num_workers", "train.log_interval", "train.checkpoint_interval", "train.keep_state",
                             "train.collective_timeout",
                             "train.tensorboard", "train.trackers", "eval.batch_size", "eval.teacher_check", "published",
                             "ablation_of", "on_request", "protocol", "data.pin_memory", "data.persistent_workers",
                             "data.prefetch_factor", "data.cache", "data.cache_dir")
DEFAULT_OUTPUT_DIR = "runs"
NAMED_WEIGHTS = ("digits",)  # pretrained values that name a weight source, not a file (engine/pretrain.py)


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


def absolute_paths(data: dict[str, Any], base: Path, keys: tuple[str, ...] = PATH_KEYS) -> None:
    """Make the relative path values of `keys` absolute against `base`, in place."""
    for key in keys:
        value = _get(data, key)
        if value in NAMED_WEIGHTS:
            continue
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            _set(data, key, str((base / value).resolve()))
        elif isinstance(value, str) and value:
            _set(data, key, str(Path(os.path.expanduser(value)).resolve()))


def recorded_path(path: str | os.PathLike, project: Path) -> str:
    """A path as a record stores it: relative to the project when inside it (committed records
    stay valid in any clone), absolute otherwise."""
    p = Path(path).resolve()
    try:
        return p.relative_to(project.resolve()).as_posix()
    except ValueError:
        return str(p)


def resolve_recorded(path: str | os.PathLike, project: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else project / p


def budget_slug(budget: Any) -> str:
    """The folder and file-name part of a run's training budget ("" for the recipe's own iterations,
    "compute-afdcd", "x2", "compute-afdcd-x2"): runs of one recipe and seed under other budgets are
    other runs, with their own run folder and record (harness/budget.py)."""
    get = (lambda k: budget.get(k)) if isinstance(budget, dict) else (lambda k: getattr(budget, k, None))  # noqa: E731
    if budget is None:
        return ""
    scale = float(get("scale") or 1.0)
    parts = [f"compute-{get('reference')}"] if get("kind") == "compute" else []
    if scale != 1.0:
        parts.append(f"x{scale:g}")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))


def run_dir(output_dir: str | os.PathLike, recipe: str, seed: int, budget: str = "") -> Path:
    """budget: budget_slug() of the run (its folder sits beside the recipe's seeds: <recipe>/<budget>-seed<seed>)."""
    return Path(output_dir) / recipe / (f"{budget}-seed{seed}" if budget else f"seed{seed}")


def teacher_checkpoint(output_dir: str | os.PathLike, teacher_recipe: str) -> Path:
    """The checkpoint a teacher recipe's run leaves: its best validation (the paper's teachers)."""
    return run_dir(output_dir, teacher_recipe, 0) / "best.safetensors"


def stage_weights(output_dir: str | os.PathLike, stage_recipe: str) -> Path:
    """What a teacher-side stage's run leaves (MasKD's tokens; engine/stage.py): run once, as seed 0."""
    return run_dir(output_dir, stage_recipe, 0) / "stage.safetensors"


def default_budget() -> dict[str, Any]:
    import dataclasses

    from .schema import BudgetConfig

    return dataclasses.asdict(BudgetConfig())


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a run computes: the resolved config without its locations and reporting options. The
    default budget (the recipe's own iterations) is left out, so runs from before budgets existed
    keep their settings ids."""
    out = copy.deepcopy(config)
    if out.get("budget") == default_budget():
        out.pop("budget")
    if isinstance(out.get("method"), dict) and out["method"].get("resize_teacher") is False:
        out["method"].pop("resize_teacher")  # likewise for the setting that heterogeneous pairs brought
    for key in LOCATION_KEYS:
        *parents, last = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def upgrade_method_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A record of the single-method schema (method.lambda_kd, .temperature, .lambda_fd, .lambda_ctr)
    in the per-method form: KD's under method.kd, Af-DCD's under method.afdcd."""
    from .schema import MOVED_METHOD_KEYS

    method = config.get("method")
    old = tuple(MOVED_METHOD_KEYS)
    if not isinstance(method, dict) or not any(k in method for k in old):
        return config
    config = copy.deepcopy(config)
    method = config["method"]
    moved = {k: method.pop(k) for k in old if k in method}
    names = str(method.get("name", "")).split("+")
    if "kd" in names:
        method["kd"] = {"weight": moved.get("lambda_kd", 1.0), "temperature": moved.get("temperature", 1.0)}
    if "afdcd" in names:
        method["afdcd"] = {**(method.get("afdcd") or {}), **moved}
    else:
        method.pop("afdcd", None)
    return config


def record_settings(config: dict[str, Any]) -> dict[str, Any]:
    """settings() of a config read back from a record: keys added to the schema since the record
    was written take their defaults, so an older record of the same run still matches."""
    from .schema import ConfigError, RecipeConfig, from_dict, to_dict

    try:
        config = to_dict(from_dict(RecipeConfig, upgrade_method_keys(config)))
    except ConfigError:
        pass  # a key since removed: compared as written, and reported as a difference
    return settings(config)


def settings_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every setting that differs (dotted keys)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
