"""The loader's settings from the cores a run was given: how many workers feed each training process.

An 8-GPU node runs eight runs side by side (reproduce's local executor), each given its share of
the node's cores (`AFDCD_CPUS`, and the run's processes pinned to them); a SLURM task gets
`SLURM_CPUS_PER_TASK`. A GPU process keeps one core for itself and gives the rest to loader
workers; on a CPU the training step itself uses every core, so it loads in its own process. None of
this changes a number: the items are the same whatever loads them (data/base.py).
"""
from __future__ import annotations

import os
from typing import Any

import torch

AUTO = "auto"
CPUS_ENV = "AFDCD_CPUS"  # the cores of this node the executor gave the run (all its processes here)


def local_processes() -> int:
    """Training processes of this run on this node (Accelerate's launcher says; 1 without one)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))


def process_cores() -> int:
    """The cores one training process may count on: its share of what the run was given, and never
    more than the cores it may run on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        given = int(os.environ["SLURM_CPUS_PER_TASK"])  # one task is one process (harness/slurm.py)
    elif os.environ.get(CPUS_ENV):
        given = int(os.environ[CPUS_ENV]) // local_processes()
    else:
        given = usable // local_processes()
    return max(1, min(given, usable))


def loader_workers(requested: int | str, on_gpu: bool | None = None) -> int:
    """data.num_workers: a number (never more than the process's cores: more only oversubscribe), or
    auto: the process's cores less its own on a GPU, none on a CPU."""
    cores = process_cores()
    if requested == AUTO:
        on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        return cores - 1 if on_gpu else 0
    return min(int(requested), cores)


def loader_options(dc: Any, workers: int, on_gpu: bool | None = None, persistent_by_default: bool = True) -> dict[str, Any]:
    """DataLoader's pin_memory, persistent_workers and prefetch_factor from the recipe (auto: pinned
    on a GPU; workers kept between epochs where persistent_by_default)."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    out: dict[str, Any] = {"pin_memory": on_gpu if dc.pin_memory == AUTO else bool(dc.pin_memory) and on_gpu}
    if workers > 0:
        keep = dc.persistent_workers
        out["persistent_workers"] = persistent_by_default if keep == AUTO else bool(keep)
        if dc.prefetch_factor is not None:
            out["prefetch_factor"] = dc.prefetch_factor
    return out


def loader_facts(dc: Any, on_gpu: bool | None = None) -> dict[str, Any]:
    """What the record says of its loader: the cores it counted on and the settings they gave."""
    workers = loader_workers(dc.num_workers, on_gpu)
    return {"cores": process_cores(), "workers": workers, **loader_options(dc, workers, on_gpu)}
