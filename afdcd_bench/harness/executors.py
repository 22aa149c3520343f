"""Where a plan's runs are started, behind one interface (docs/scale.md, "Executors"): submit a run,
poll it, cancel it. `inprocess` trains in this process (the demo); `local` keeps every GPU of the
node busy (or N CPU runs at once), one `accelerate launch` per run in its own process group; the
SLURM executor is in harness/slurm.py. An executor never changes what a run computes."""
from __future__ import annotations

import datetime
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..engine.feeding import CPUS_ENV
from ..engine.stopping import EXIT_PREEMPTED, end_with_parent
from ..files import atomic_write
from .plan import PlannedRun

QUEUED, RUNNING, DONE, FAILED, PREEMPTED = "queued", "running", "done", "failed", "preempted"
UNKNOWN = "?"  # a scheduler that could not be asked (harness/slurm.job_state): never read as failed


@dataclass
class Handle:
    key: str
    log: str | None = None
    job_id: str | None = None  # SLURM's
    state: str = QUEUED
    detail: str = ""
    process: Any = field(default=None, repr=False)


class Executor(Protocol):
    name: str
    waits_for_dependencies: bool  # True: the scheduler holds a run until its dependencies ended (SLURM)

    def capacity(self) -> int: ...
    def submit(self, run: PlannedRun, needs: list[Handle]) -> Handle: ...
    def poll(self, handle: Handle) -> str: ...
    def cancel(self, handle: Handle) -> None: ...


def train_command(run: PlannedRun, results_dir: Path, port: int | None = None) -> list[str]:
    """`accelerate launch` of one run: its processes on one node, its own rendezvous port."""
    procs = run.resources.processes
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs), "--num_machines", "1"]
    if procs > 1:
        launch += ["--multi_gpu", "--main_process_port", str(port or free_port())]
    return [*launch, "-m", "afdcd_bench", *run.train_args(results_dir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_path(run: PlannedRun, executor: str) -> Path:
    return Path(run.run_dir) / "logs" / f"{executor}.log"


class InProcessExecutor:
    """Each run trained in this process, one after another (the demo's default)."""

    name = "inprocess"
    waits_for_dependencies = False

    def __init__(self, results_dir: Path):
        self.results_dir = results_dir

    def capacity(self) -> int:
        return 1

    def submit(self, run: PlannedRun, needs: list[Handle]) -> Handle:
        from accelerate.state import AcceleratorState

        from ..config import load_recipe
        from ..engine import train

        handle = Handle(run.key, state=RUNNING)
        os.environ["AFDCD_EXECUTOR"] = self.name
        try:
            train(load_recipe(run.recipe, run.overrides), results_dir=self.results_dir)
            handle.state = DONE
        finally:
            os.environ.pop("AFDCD_EXECUTOR", None)
            AcceleratorState._reset_state(reset_partial_state=True)
        return handle

    def poll(self, handle: Handle) -> str:
        return handle.state

    def cancel(self, handle: Handle) -> None:
        pass


def share_cores(slots: int) -> list[list[int]]:
    """The cores this process may use, split into `slots` equal runs of neighbours (the remainder
    unused), so parallel runs do not take each other's; none pinned where there are fewer cores than slots."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        return [[] for _ in range(slots)]
    each = len(cores) // max(1, slots)
    return [cores[i * each:(i + 1) * each] for i in range(slots)] if each else [[] for _ in range(slots)]


def _start_run(cores: list[int]) -> None:
    """In the run's launcher before it starts: dies with reproduce, and runs on the slot's cores (its
    processes and their loader workers inherit them)."""
    end_with_parent(signal.SIGKILL)
    if cores:
        os.sched_setaffinity(0, cores)


class LocalExecutor:
    """Runs as separate process groups on this node: each GPU slice (`CUDA_VISIBLE_DEVICES`) or CPU
    share (`OMP_NUM_THREADS`) holds one run at a time."""

    name = "local"
    waits_for_dependencies = False

    def __init__(self, results_dir: Path, gpus: list[int], gpus_per_run: int, parallel: int, threads: int | None):
        self.results_dir = results_dir
        self.gpus_per_run = gpus_per_run
        self.threads = threads
        if gpus:
            if gpus_per_run < 1 or gpus_per_run > len(gpus):
                raise ValueError(f"--gpus-per-run {gpus_per_run}: this node has {len(gpus)} GPU(s)")
            self.slots = [gpus[i:i + gpus_per_run] for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
        else:
            self.slots = [[] for _ in range(max(1, parallel))]
        self.cores = share_cores(len(self.slots))
        self.busy: dict[int, Handle] = {}

    def capacity(self) -> int:
        return len(self.slots) - len(self.busy)

    def submit(self, run: PlannedRun, needs: list[Handle]) -> Handle:
        slot = next(i for i in range(len(self.slots)) if i not in self.busy)
        env = {**os.environ, "AFDCD_EXECUTOR": self.name, "PYTHONUNBUFFERED": "1"}
        cores = self.cores[slot]
        if cores:  # its loader workers count on these (engine/feeding.py)
            env[CPUS_ENV] = str(len(cores))
        if self.slots[slot]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.slots[slot]))
        else:
            env["ACCELERATE_USE_CPU"] = "1"  # several CPU processes synchronise over gloo (recipes/accelerate/README.md)
            if self.threads:
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        log = log_path(run, self.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = train_command(run, self.results_dir)
        with open(log, "a") as out:
            out.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} $ {shlex.join(cmd)}\n")
            out.flush()
            # its own session: stopping it reaches every process of the run, and a Ctrl-C of
            # `reproduce` reaches the runs only through `cancel` (which waits for their save)
            # the launcher dies at once with reproduce, even a SIGKILLed one (it holds no state); the
            # training below it gets SIGTERM then (its own parent-death signal: afdcd_bench/cli.py) and saves
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=functools.partial(_start_run, cores))
        handle = Handle(run.key, log=str(log), state=RUNNING, process=proc)
        handle.detail = shlex.join(cmd)
        self.busy[slot] = handle
        return handle

    def poll(self, handle: Handle) -> str:
        if handle.state != RUNNING:
            return handle.state
        rc = handle.process.poll()
        if rc is None:
            return RUNNING
        self.busy = {s: h for s, h in self.busy.items() if h is not handle}
        handle.state = DONE if rc == 0 else PREEMPTED if rc == EXIT_PREEMPTED else FAILED
        if rc not in (0, EXIT_PREEMPTED):
            handle.detail = f"exit status {rc}"
        return handle.state

    def cancel(self, handle: Handle, grace: float = 120.0) -> None:
        """SIGTERM to the run's process group: the run saves at the end of its step (engine/stopping.py).
        Waits for every process of the group, not only the launcher (`accelerate launch` of one process
        dies at once and leaves the training saving); SIGKILL to what is left after `grace` seconds."""
        proc = handle.process
        if proc is None or proc.poll() is not None and not _group_alive(proc.pid):
            return
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()  # reaps the launcher once it ended
            time.sleep(0.2)
        if _group_alive(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self.busy = {s: h for s, h in self.busy.items() if h is not handle}
        handle.state, handle.detail = PREEMPTED, "stopped by reproduce; rerunning resumes it"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_jobs(results_dir: Path, executor: str, handles: dict[str, Handle]) -> None:
    """jobs.json beside the records: which executor ran each run, its log, job id and last known state."""
    body = {"executor": executor, "updated": datetime.datetime.now().isoformat(timespec="seconds"),
            "submitter": {"pid": os.getpid(), "host": socket.gethostname()},  # status asks whether these still live
            "runs": {k: {"log": h.log, "job_id": h.job_id, "state": h.state, "detail": h.detail,
                         "pid": getattr(h.process, "pid", None)} for k, h in handles.items()}}
    atomic_write(Path(results_dir) / "jobs.json", lambda tmp: Path(tmp).write_text(json.dumps(body, indent=2)))


def read_jobs(results_dir: Path) -> dict[str, Any]:
    path = Path(results_dir) / "jobs.json"
    if not path.is_file():
        return {"executor": None, "runs": {}}
    try:
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or not isinstance(body.get("runs"), dict) or \
                not all(isinstance(v, dict) for v in body["runs"].values()):
            raise ValueError("not an object with a 'runs' object of objects")
    except ValueError as exc:
        raise ValueError(f"{path} is not the jobs file `reproduce` writes ({exc}): rerun the reproduce command to write it "
                         "again") from None
    return body


def sleep_between_polls(seconds: float = 1.0) -> None:
    time.sleep(seconds)
