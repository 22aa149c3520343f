"""What a run settles before anything is built: its processes and batch split, its Accelerator,
its trackers, and its run folder (lock, resume state, refusals), the same on every process."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, GradientAccumulationPlugin, broadcast_object_list

from ..config import RecipeConfig, budget_slug
from .checkpointing import latest_state
from .collectives import process_group_kwargs
from .finished import finished_record
from .records import record_path
from .run_folder import (RunFolderError, RunLock, check_finished, check_record_slot, check_resumable, check_writable,
                         read_progress, set_aside)


class LaunchMismatch(RuntimeError):
    pass


def split_batch(effective: int, processes: int, per_device: int | None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with processes x per-device x accumulation = effective."""
    if effective % processes:
        raise ValueError(f"effective batch {effective} is not divisible by {processes} processes")
    per_process = effective // processes
    if per_device is not None and per_device < 1:
        raise ValueError(f"--per-device-batch must be at least 1, got {per_device}")
    per_device = per_device or per_process
    if per_process % per_device:
        raise ValueError(f"per-device batch {per_device} does not divide {per_process} (effective {effective} / {processes} processes)")
    return per_device, per_process // per_device


def trackers_of(tc: Any) -> list[str]:
    """The recipe's trackers, each checked to be importable before any step runs."""
    from accelerate.tracking import get_available_trackers

    names = list(dict.fromkeys([*tc.trackers, *(["tensorboard"] if tc.tensorboard else [])]))
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"train.trackers: {', '.join(missing)} not installed (pip install the tracker's package, "
                         f"e.g. tensorboardx, wandb, mlflow-skinny); installed: {sorted(available) or 'none'}")
    return names


def flat_hparams(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted scalar settings, as TensorBoard's hparams want them."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def check_launch(accelerator: Accelerator) -> None:
    """Refuse runs where the launcher started N processes that do not see each other.

    Measured on CPU: `--multi_gpu` without ACCELERATE_USE_CPU=1 gives num_processes == WORLD_SIZE
    and even a gloo process group, but distributed type NO: no gradient is ever synchronised.
    """
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() == expected
    grouped = grouped and accelerator.distributed_type != DistributedType.NO  # else nothing wraps the model
    if accelerator.num_processes != expected or (expected > 1 and not grouped):
        raise LaunchMismatch(
            f"the launch set WORLD_SIZE={expected} but this process sees {accelerator.num_processes} process(es) "
            f"without a synchronised setup (distributed type "
            f"{accelerator.distributed_type.value}): the processes would train unsynchronised. On a CPU machine use "
            f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` (see recipes/accelerate/README.md)."
        )


def make_accelerator(cfg: RecipeConfig, run_dir: Path, per_device_batch: int | None,
                     trackers: list[str]) -> tuple[Accelerator, int, int]:
    """The run's Accelerator, checked against the launch; returns it with (per-device batch, accumulation)."""
    tc = cfg.train
    probe_procs = int(os.environ.get("WORLD_SIZE", "1"))
    _, accum = split_batch(tc.effective_batch, probe_procs, per_device_batch)
    handlers = process_group_kwargs(probe_procs, torch.cuda.is_available(), tc.collective_timeout)
    accelerator = Accelerator(
        log_with=trackers or None,
        project_dir=str(run_dir),
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(even_batches=False),
        kwargs_handlers=handlers,
    )
    check_launch(accelerator)
    per_device, accum = split_batch(tc.effective_batch, accelerator.num_processes, per_device_batch)
    if tc.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(f"train.mixed_precision=fp16 needs a CUDA device; on {accelerator.device.type} Accelerate would train "
                         "in fp32 while the record said fp16: use train.mixed_precision=bf16 or no")
    return accelerator, per_device, accum


def prepare_run_folder(accelerator: Accelerator, name: str, run_dir: Path, results_dir: Path | None, resume: bool,
                       current: dict[str, Any]) -> tuple[RunLock | None, Path | None, Path | None, dict[str, Any] | None]:
    """On the main process: writable folders, no other run's record in the way, the lock, a
    set-aside old run, the settings check. Returns (lock, set-aside folder, state to resume from,
    the record of the run if it already finished there). Any refusal is raised on every process
    (the others would otherwise wait at a collective)."""
    lock = aside = None
    error: str | None = None
    if accelerator.is_main_process:
        try:
            check_writable(run_dir.parent, "output folder (output_dir)")
            if results_dir is not None:
                check_writable(results_dir, "results folder")
                check_record_slot(record_path(results_dir, name, current["train"]["seed"], budget_slug(current.get("budget"))), current)
            lock = RunLock(run_dir.with_name(run_dir.name + ".lock"))
            lock.acquire()
            if not resume:
                aside = set_aside(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            finished = finished_record(run_dir) if resume else None
            state = latest_state(run_dir) if resume else None
            if finished is not None:
                check_finished(run_dir, finished, current)
            elif state is not None:
                check_resumable(run_dir, state, read_progress(state), current)
        except RunFolderError as exc:
            error = str(exc)
            if lock is not None:
                lock.release()
    if accelerator.num_processes > 1:
        box = [error]
        broadcast_object_list(box)
        error = box[0]
        accelerator.wait_for_everyone()
    if error:
        raise RunFolderError(error)
    if not resume:
        return lock, aside, None, None
    return lock, aside, latest_state(run_dir), finished_record(run_dir)
