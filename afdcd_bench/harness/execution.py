"""A plan run on an executor: a run starts once what it needs has finished (or, under SLURM, is
submitted at once with `afterok` dependencies); a failed run stops its dependents only; Ctrl-C stops
the runs this process started, each saving its state first (docs/scale.md)."""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from .executors import DONE, FAILED, PREEMPTED, QUEUED, RUNNING, Executor, Handle, InProcessExecutor, LocalExecutor, \
    sleep_between_polls, write_jobs
from .plan import Plan, Resources

EXECUTORS = ("inprocess", "local", "slurm")
NOT_STARTED = "not started"


class RunsFailed(RuntimeError):
    pass


def visible_gpus() -> list[int]:
    """This node's GPUs, as CUDA_VISIBLE_DEVICES (when set) or torch count them."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [int(g) for g in given.split(",") if g.strip().isdigit()]
    return list(range(torch.cuda.device_count()))


def resolve_resources(executor: str, gpus: int | None = None, processes: int | None = None, nodes: int = 1,
                      threads: int | None = None) -> Resources:
    """GPUs per run and node: as given; else 1 under SLURM (the submitting host may have none) and on a
    node with GPUs, 0 on a CPU node. Processes: one per GPU unless given."""
    if gpus is None:
        gpus = 1 if executor == "slurm" or (executor == "local" and visible_gpus()) else 0
    for name, value in (("--gpus-per-run", gpus), ("--processes-per-run", processes if processes is not None else 1),
                        ("--nodes", nodes), ("--threads", threads if threads is not None else 1)):
        if value < (0 if name == "--gpus-per-run" else 1):
            raise ValueError(f"{name} must be at least {0 if name == '--gpus-per-run' else 1}, got {value}")
    processes = processes or max(1, gpus)
    if gpus and processes != gpus:
        raise ValueError(f"--processes-per-run {processes} with --gpus-per-run {gpus}: a GPU run has one process per GPU")
    return Resources(processes=processes, gpus=gpus, nodes=nodes, threads=threads)


def run_threads(executor: str, resources: Resources, parallel: int) -> int | None:
    """The CPU threads each training process of a run gets on a node without GPUs (what its cost of a
    step must be measured with); None where runs train on GPUs or elsewhere (SLURM's nodes)."""
    if resources.gpus or executor == "slurm" or (executor == "local" and visible_gpus()):
        return None
    if executor == "inprocess":
        import torch

        return torch.get_num_threads()
    return resources.threads or max(1, (os.cpu_count() or 1) // max(1, parallel * resources.processes))


def make_executor(name: str, results_dir: Path, resources: Resources, parallel: int, slurm: dict[str, Any]) -> Executor:
    if name == "inprocess":
        return InProcessExecutor(results_dir)
    if name == "local":
        gpus = visible_gpus()
        if resources.nodes > 1:
            raise ValueError("--nodes above 1 needs --executor slurm (the local executor runs on this node)")
        if not gpus and parallel < 1:
            raise ValueError(f"--parallel must be at least 1, got {parallel}")
        return LocalExecutor(results_dir, gpus, resources.gpus or 1, parallel, run_threads(name, resources, parallel))
    from .slurm import SlurmExecutor

    return SlurmExecutor(results_dir, resources, slurm)


class Stopped(KeyboardInterrupt):
    """reproduce itself got SIGTERM: its runs are stopped (each saving) before it ends."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"stopped by {signal.Signals(signum).name}; the runs it started saved their state, and rerunning the "
                  "same command resumes them")


def execute(plan: Plan, executor: Executor, done: set[str], console: Console) -> dict[str, Handle]:
    """Every run of the plan not in `done`, dependencies first; the handles by run key. SIGTERM is
    taken as Ctrl-C is: the runs started here are stopped, each saving first."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        return _execute(plan, executor, done, console)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _execute(plan: Plan, executor: Executor, done: set[str], console: Console) -> dict[str, Handle]:
    pending = [r for r in plan.runs if r.key not in done]
    handles: dict[str, Handle] = {}
    active: list[Handle] = []
    try:
        while pending or active:
            for run in list(pending):
                failed = [n for n in run.needs if n in handles and handles[n].state in (FAILED, PREEMPTED, NOT_STARTED)]
                if failed:
                    handles[run.key] = Handle(run.key, state=NOT_STARTED, detail=f"needs {failed[0]}, which {handles[failed[0]].state}")
                    pending.remove(run)
                    continue
                ready = executor.waits_for_dependencies or all(n in done for n in run.needs)
                if not ready:
                    continue
                if executor.capacity() <= 0:
                    break
                console.rule(f"{run.recipe} (seed {run.seed})")
                handle = executor.submit(run, [handles[n] for n in run.needs if n in handles])
                handles[run.key] = handle
                pending.remove(run)
                if handle.log:
                    console.log(f"{run.key}: {executor.name}{f' job {handle.job_id}' if handle.job_id else ''}, log {handle.log}")
                if handle.state in (RUNNING, QUEUED):
                    active.append(handle)
                elif handle.state == DONE:
                    done.add(run.key)
                write_jobs(plan.results_dir, executor.name, handles)
            if executor.waits_for_dependencies:  # the scheduler holds them; nothing to follow here unless waiting
                return handles
            for handle in list(active):
                state = executor.poll(handle)
                if state in (RUNNING, QUEUED):
                    continue
                active.remove(handle)
                if state == DONE:
                    done.add(handle.key)
                    console.log(f"{handle.key}: done")
                else:
                    console.log(f"[red]{handle.key}: {state}{f' ({handle.detail})' if handle.detail and state != PREEMPTED else ''}; "
                                f"log {handle.log}[/red]")
                write_jobs(plan.results_dir, executor.name, handles)
            if active:
                sleep_between_polls()
    except BaseException:
        for handle in active:  # whoever starts processes stops them: no training left orphaned
            console.log(f"stopping {handle.key} (it saves its state; rerunning resumes it)")
            executor.cancel(handle)
        write_jobs(plan.results_dir, executor.name, handles)
        raise
    return handles


def report_failures(plan: Plan, handles: dict[str, Handle]) -> None:
    """Raise RunsFailed naming each run that failed or never started, its log and how to rerun it."""
    bad = [h for h in handles.values() if h.state in (FAILED, PREEMPTED, NOT_STARTED)]
    if not bad:
        return
    runs = plan.by_key()
    lines = []
    for h in bad:
        run = runs[h.key]
        one = shlex.join([sys.executable, "-m", "afdcd_bench", *run.train_args(plan.results_dir)])
        lines.append(f"- {h.key}: {h.state}{f' ({h.detail})' if h.detail and not h.detail.startswith(sys.executable) else ''}"
                     f"{f'; log {h.log}' if h.log else ''}; alone: {one}")
    raise RunsFailed(f"{len(bad)} run(s) did not finish:\n" + "\n".join(lines)
                     + "\nRerunning the same reproduce command skips the finished runs and resumes the stopped ones.")
