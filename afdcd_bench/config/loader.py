"""Recipe files: `extends` inheritance, dotted overrides, validation into RecipeConfig."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .checks import check_ranges
from .runs import DEFAULT_OUTPUT_DIR, PATH_KEYS, absolute_paths, stage_weights, teacher_checkpoint
from .schema import ConfigError, RecipeConfig, from_dict, to_dict


def project_root() -> Path:
    """The folder that holds recipes/: relative paths inside recipe files start here."""
    return recipes_root().resolve().parent


def recipes_root() -> Path:
    env = os.environ.get("AFDCD_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "recipes"


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = recipes_root() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"recipe {str(name_or_path)!r} not found (neither a file nor {candidate}); `afdcd-bench recipes` lists them")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"recipe inheritance loops through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    parents = data.pop("extends", None)
    if parents is None:
        return data
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _merge(merged, load_raw((path.parent / parent), _seen + (path,)))
    return _merge(merged, data)


YAML11_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}


def apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like dotted.key=value")
    key, raw = override.split("=", 1)
    try:
        # YAML 1.1 reads no/yes/on/off as booleans; on a command line they mean the word
        # (train.mixed_precision=no). Booleans are true/false.
        value = raw if raw.strip().lower() in YAML11_BOOL_WORDS else yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
        node = node[part]
    node[parts[-1]] = value


def recipe_name(path: Path) -> str:
    try:
        return path.resolve().relative_to(recipes_root().resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def load_recipe(name_or_path: str | os.PathLike, overrides: Iterable[str] = (), check: bool = True) -> RecipeConfig:
    """Recipe file + dotted overrides -> a checked RecipeConfig with absolute paths (config/runs.py).

    check=False skips the range checks (reading back a record written before they existed).
    """
    path = find_recipe(name_or_path)
    data = load_raw(path)
    data.setdefault("name", recipe_name(path))
    data.setdefault("output_dir", DEFAULT_OUTPUT_DIR)
    absolute_paths(data, project_root())
    for ov in overrides:
        apply_override(data, ov)
        key = ov.split("=", 1)[0].strip()
        if key in PATH_KEYS:
            absolute_paths(data, Path.cwd(), (key,))
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and not teacher.get("checkpoint") and teacher.get("recipe"):
        teacher["checkpoint"] = str(teacher_checkpoint(data["output_dir"], teacher["recipe"]))
    for section in (data.get("method") or {}).values():  # a method built on a stage's output (MasKD's tokens)
        if isinstance(section, dict) and not section.get("stage_weights") and section.get("stage_recipe"):
            section["stage_weights"] = str(stage_weights(data["output_dir"], section["stage_recipe"]))
    try:
        cfg = from_dict(RecipeConfig, data)
        if check:
            check_ranges(cfg)
        return cfg
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_hash(cfg: RecipeConfig) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_teacher_recipe(name: str) -> bool:
    """A benchmark's teacher is the network its `<benchmark>/teacher` recipe trains."""
    return name.endswith("/teacher")


def run_method(name: str, method: str) -> str:
    """What a run of this recipe is in tables: "teacher" for the teacher recipe, else its method."""
    return "teacher" if is_teacher_recipe(name) else method


NOT_RECIPES = ("accelerate", "slurm")  # folders of launch and job settings beside the benchmarks' recipes


def list_recipes(benchmark: str | None = None) -> list[str]:
    """Names of the runnable recipes. Files named `_*.yaml` are shared parts (bases, the quick
    schedule); recipes/accelerate/ and recipes/slurm/ hold launch and job settings, not recipes."""
    root = recipes_root()
    names = []
    for p in root.rglob("*.yaml"):
        rel = p.relative_to(root)
        if rel.parts[0] in NOT_RECIPES or p.name.startswith("_"):
            continue
        if benchmark is None or rel.parts[0] == benchmark:
            names.append(rel.with_suffix("").as_posix())
    return sorted(names)
