"""Run records: one JSON of measured facts per run, written atomically, never edited."""
from __future__ import annotations

import datetime
import hashlib
import json
import math
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
from .feeding import loader_facts

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


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device: torch.device) -> str:
    """Where a run computed. On a CPU the model and the instruction set torch's kernels use: runs
    are bit-reproducible on one kind of CPU, not across kinds (README, "The committed demo results")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


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
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
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
        "launch": where_ran(accelerator),
        "distributed_type": str(accelerator.distributed_type.value),
        "per_device_batch": per_device,
        "grad_accumulation": accum,
        "mixed_precision": tc.mixed_precision,  # fp16 is refused where it would not run (launching.make_accelerator)
        "inputs": progress["settings"]["inputs"],  # sha256 of the teacher and stage files (engine/identity.py)
        "resumed_from_step": resumed_from,
        "wall_seconds": wall_before + session_wall,  # every session of the run, up to its end (a resumed run's earlier ones too)
        "session_wall_seconds": session_wall,
        "train_seconds": progress["train_seconds"],  # its steps only (engine/checkpointing.RunTimes)
        "eval_seconds": progress.get("eval_seconds", 0.0),  # its validations (and test scores)
        "images_per_second": images / progress["train_seconds"] if progress["train_seconds"] else None,
        **data_wait(progress),
        "loader": loader_facts(cfg.data, accelerator.device.type == "cuda"),  # the workers that fed it (engine/feeding.py)
        "peak_memory_mb": peak_memory_mb(accelerator.device),
    }


def data_wait(progress: dict[str, Any]) -> dict[str, Any]:
    """How long the loop waited for its batches (engine/loop.timed_batches): per step, and as a share
    of the training seconds. A share well above zero is a loader that does not keep up (a starved GPU)."""
    wait, steps, train = progress.get("data_wait_seconds"), progress.get("step") or 0, progress.get("train_seconds") or 0.0
    if wait is None or not steps:
        return {"data_wait_ms_per_step": None, "data_wait_share": None}
    return {"data_wait_ms_per_step": 1000 * wait / steps, "data_wait_share": wait / train if train else None}


def where_ran(accelerator: Any) -> dict[str, Any]:
    """Which executor started the run (AFDCD_EXECUTOR, set by `reproduce`; "manual" for a command
    typed by hand), its SLURM job, nodes, GPUs and processes. Not part of the run's identity: the
    executor never changes what a run computes (docs/scale.md)."""
    processes = accelerator.num_processes
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or processes)
    return {
        "executor": os.environ.get("AFDCD_EXECUTOR", "manual"),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "nodes": max(1, processes // max(1, per_node)),
        "gpus": processes if accelerator.device.type == "cuda" else 0,
        "processes": processes,
    }


def record_path(results_dir: Path, name: str, seed: int, budget: str = "") -> Path:
    """budget: config/runs.py budget_slug() of the run ("" for the recipe's own iterations)."""
    return Path(results_dir) / f"{name.replace('/', '__')}{'__' + budget if budget else ''}__seed{seed}.json"


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a record's facts in canonical JSON (without the digest itself and what read_record adds)."""
    body = {k: v for k, v in record.items() if k not in ("digest", "_path")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """The record with its digest, so that a later edit by hand is found when it is read."""
    facts = json.loads(json.dumps(record, default=str))  # as it will read back: the digest is of that
    facts["digest"] = record_digest(facts)
    text = json.dumps(facts, indent=2, sort_keys=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# What the table, the plots and reproduce read from a record, with the types they need.
REQUIRED = {"kind": str, "recipe": str, "benchmark": str, "method": str, "student": str, "seed": int, "config": dict}
NUMBERS = ("final_miou", "best_miou", "wall_seconds", "published_miou", "teacher_miou", "test_miou_at_best", "final_test_miou",
           "best_test_miou", "data_wait_ms_per_step", "data_wait_share")  # each a number or null


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
    for key in ("history", "test_history"):
        if not isinstance(data.get(key, []), list) or not all(isinstance(h, dict) and "step" in h and _number(h["miou"])
                                                             for h in data.get(key, [])):
            raise RecordError(f"run record {path}: {key!r} is not a list of {{step, miou}}")
    if "digest" in data and data["digest"] != record_digest(data):
        raise RecordError(f"run record {path} was changed after its run wrote it (its digest no longer matches): "
                          "records are facts written by runs; rerun the run rather than editing its record")
    disagreement = self_disagreement(data)
    if disagreement:
        raise RecordError(f"run record {path} disagrees with itself: {disagreement}")
    return data


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))


def self_disagreement(rec: dict[str, Any]) -> str | None:
    """What in a record contradicts the rest of it (an edit by hand, a tool that rewrote one field),
    or None: best = the maximum of the validation history at best_step, final = its last entry, the
    per-class IoUs averaging to the mIoU, and the same for the test split's history."""
    history = rec.get("history") or []
    if history:
        best = max(history, key=lambda h: h["miou"])
        if not _same(rec.get("best_miou"), best["miou"]):
            return f"best_miou {rec.get('best_miou')} but the best of its validation history is {best['miou']} (step {best['step']})"
        if "best_step" in rec and rec["best_step"] != best["step"] and not _same(
                next((h["miou"] for h in history if h["step"] == rec["best_step"]), None), best["miou"]):
            return f"best_step {rec['best_step']} but its history peaks at step {best['step']}"
        if not _same(rec.get("final_miou"), history[-1]["miou"]):
            return f"final_miou {rec.get('final_miou')} but the last validation of its history is {history[-1]['miou']}"
    elif rec.get("best_miou") is not None or rec.get("final_miou") is not None:
        return "mIoU values but no validation in its history"
    all_slots = bool(((rec.get("config") or {}).get("eval") or {}).get("all_slots"))  # COCO-Stuff's mean over every slot
    for key, score in (("final_iou", "final_miou"), ("best_iou", "best_miou")):
        slots = rec.get(key) or []
        ious = [v for v in slots if v is not None and not math.isnan(v)]
        mean = sum(ious) / (len(slots) if all_slots else len(ious)) if ious else None
        if mean is not None and rec.get(score) is not None and not _same(mean, rec[score]):
            return f"{score} {rec[score]} but the mean of its per-class {key} is {mean}"
    tests = rec.get("test_history") or []
    if tests:
        if not _same(rec.get("best_test_miou"), max(h["miou"] for h in tests)):
            return f"best_test_miou {rec.get('best_test_miou')} but the best of its test history is {max(h['miou'] for h in tests)}"
        if not _same(rec.get("final_test_miou"), tests[-1]["miou"]):
            return f"final_test_miou {rec.get('final_test_miou')} but the last entry of its test history is {tests[-1]['miou']}"
        at_best = next((h["miou"] for h in tests if h["step"] == rec.get("best_step")), None)
        if at_best is not None and not _same(rec.get("test_miou_at_best"), at_best):
            return f"test_miou_at_best {rec.get('test_miou_at_best')} but its test history has {at_best} at best_step {rec.get('best_step')}"
    return None


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
