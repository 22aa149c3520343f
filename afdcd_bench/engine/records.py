"""Run records: one JSON of measured facts per run, written atomically, never edited."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..config import RecipeConfig, config_hash, to_dict
from ..files import atomic_write

PACKAGES = ("torch", "torchvision", "timm", "accelerate", "deepspeed", "datasets", "afdcd-bench")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # peak RSS of the process


def run_facts(cfg: RecipeConfig, accelerator: Any, per_device: int, accum: int, progress: dict[str, Any],
              resumed_from: int | None, wall_before: float, session_wall: float) -> dict[str, Any]:
    """What every run record says of its run: what ran, where, with what, and how long."""
    tc = cfg.train
    images = tc.iterations * tc.effective_batch
    return {
        "kind": "afdcd-bench-run",
        "recipe": cfg.name,
        "benchmark": cfg.benchmark,
        "method": cfg.method.name,
        "seed": tc.seed,
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": device_kind(accelerator.device),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "per_device_batch": per_device,
        "grad_accumulation": accum,
        "mixed_precision": tc.mixed_precision,
        "resumed_from_step": resumed_from,
        "wall_seconds": wall_before + session_wall,  # every session of the run, up to its end (a resumed run's earlier ones too)
        "session_wall_seconds": session_wall,
        "train_seconds": progress["train_seconds"],
        "images_per_second": images / progress["train_seconds"] if progress["train_seconds"] else None,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
    }


def record_path(results_dir: Path, name: str, seed: int) -> Path:
    return Path(results_dir) / f"{name.replace('/', '__')}__seed{seed}.json"


def write_record(path: Path, record: dict[str, Any]) -> Path:
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# What the table, the plots and reproduce read from a record, with the types they need.
REQUIRED = {"kind": str, "recipe": str, "benchmark": str, "method": str, "student": str, "seed": int, "config": dict}
NUMBERS = ("final_miou", "best_miou", "wall_seconds", "published_miou", "teacher_miou", "test_miou_at_best", "final_test_miou",
           "best_test_miou")  # each a number or null


class RecordError(ValueError):
    """A record file that cannot be trusted; the message names the file and what is wrong with it."""


def check_record(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"run record {path} is not a JSON object")
    for key, tp in REQUIRED.items():
        if key not in data:
            raise RecordError(f"run record {path} has no {key!r}")
        if not isinstance(data[key], tp) or isinstance(data[key], bool):
            raise RecordError(f"run record {path}: {key!r} is {data[key]!r}, not a {tp.__name__}")
    for key in NUMBERS:
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise RecordError(f"run record {path}: {key!r} is {v!r}, not a number")
    for key in ("final_iou", "best_iou"):
        v = data.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) or x is None for x in v)):
            raise RecordError(f"run record {path}: {key!r} is not a list of numbers")
    if not isinstance(data.get("history", []), list) or not all(isinstance(h, dict) and "step" in h and "miou" in h for h in data.get("history", [])):
        raise RecordError(f"run record {path}: 'history' is not a list of {{step, miou}}")
    return data


def read_record(path: Path) -> dict[str, Any]:
    """One record, checked; RecordError (naming the file) if it is unreadable, truncated or malformed."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RecordError(f"run record {path} cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"run record {path} is not valid JSON (truncated or damaged: {exc})") from None
    if isinstance(data, dict) and data.get("kind") != "afdcd-bench-run":
        raise RecordError(f"{path} is not a run record (kind {data.get('kind')!r})")
    data = check_record(data, path)
    data["_path"] = str(path)
    return data


def record_files(results_dir: Path) -> list[Path]:
    """The run-record files under a folder, by their name (record_path): other JSON files are not records."""
    return sorted(p for p in Path(results_dir).rglob("*__seed*.json") if not p.name.startswith("."))


def read_records(results_dir: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every valid record under results_dir; each bad one is named in `problems` (never skipped silently:
    without a list to collect them, the first bad one raises)."""
    out = []
    for p in record_files(results_dir):
        try:
            out.append(read_record(p))
        except RecordError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return out
