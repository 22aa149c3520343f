"""What makes two runs the same run, beyond the recipe's settings (docs/runs.md, "One run, one record").

A run computes what its settings say, from the files it reads, under the launch that ran it. A
teacher checkpoint or a token file is named in the config by its path only, so a retrained teacher
at the same path would pass for the same run: those files are identified by their content (sha256).
The launch (processes, per-device batch, accumulation) changes BatchNorm statistics and the data
order, so a run resumed, skipped or averaged under another launch is another run.

`identity()` is what a stopped run's state, a record and a planned run are compared by:
the settings at the top level (so differences read as `train.lr: ...`), with `inputs` and `launch`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import RecipeConfig, settings, to_dict
from ..config.runs import record_settings
from ..methods import needs_teacher
from ..models.weights import sha256_file

_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a file is read once per process


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(p)
    return _HASHES[key]


def input_paths(cfg: RecipeConfig) -> dict[str, str]:
    """Each file the run reads besides its recipe, by the recipe key that names it: the teacher
    checkpoint (when the method uses a teacher) and stage outputs (MasKD's tokens)."""
    paths: dict[str, str] = {}
    if needs_teacher(cfg.method.name) and cfg.teacher is not None and cfg.teacher.checkpoint:
        paths["teacher.checkpoint"] = cfg.teacher.checkpoint
    for component, options in cfg.method.options.items():
        if getattr(options, "stage_weights", None):
            paths[f"method.{component}.stage_weights"] = options.stage_weights
    return paths


def input_files(cfg: RecipeConfig) -> dict[str, str | None]:
    """sha256 of each of input_paths(); None for a file that is not there (the run itself then
    stops with a message naming it)."""
    return {key: file_sha256(p) if Path(p).is_file() else None for key, p in input_paths(cfg).items()}


def launch(num_processes: int, per_device_batch: int, grad_accumulation: int) -> dict[str, int]:
    return {"num_processes": int(num_processes), "per_device_batch": int(per_device_batch),
            "grad_accumulation": int(grad_accumulation)}


def single_process_launch(cfg: RecipeConfig) -> dict[str, int]:
    """The launch `reproduce` gives every run: one process, the whole effective batch."""
    return launch(1, cfg.train.effective_batch, 1)


def identity(run_settings: dict[str, Any], inputs: dict[str, str | None], run_launch: dict[str, int]) -> dict[str, Any]:
    return {**run_settings, "inputs": dict(inputs), "launch": dict(run_launch)}


def planned_identity(cfg: RecipeConfig, run_launch: dict[str, int], inputs: dict[str, str | None] | None = None) -> dict[str, Any]:
    return identity(settings(to_dict(cfg)), input_files(cfg) if inputs is None else inputs, run_launch)


def record_identity(record: dict[str, Any]) -> dict[str, Any]:
    """identity() of a run record. Records written before inputs were hashed say `inputs` unknown,
    so they never pass for a run whose inputs are known."""
    return identity(record_settings(record["config"]), record.get("inputs", {"unknown": "written before inputs were recorded"}),
                    launch(record.get("num_processes", 1), record.get("per_device_batch", 0), record.get("grad_accumulation", 1)))
