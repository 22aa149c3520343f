"""`afdcd-bench status RESULTS_DIR`: each planned run of a reproduction as done, running (step,
ETA), queued, failed (last log lines), never starting (what it needs failed) or not started, from
files and the scheduler, not from the process that submitted them (which may be gone)."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..engine.checkpointing import latest_state
from ..engine.records import RecordError, data_wait, read_record
from .executors import UNKNOWN, read_jobs
from .plan import PlannedRun, load_plan

STEP_LINE = re.compile(r"step (\d+)/(\d+)")


@dataclass
class RunStatus:
    key: str
    state: str  # done | running | queued | failed | never starts | not started | unknown (could not find out)
    job_id: str | None = None
    step: int | None = None
    eta: str = ""
    detail: str = ""


def _lock_held(run_dir: Path) -> bool:
    """A run's lock is held while a training process has it (run_folder.RunLock; released when it dies)."""
    path = run_dir.with_name(run_dir.name + ".lock")
    if not path.is_file():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def tail(path: str | None, lines: int) -> list[str]:
    if not path or not Path(path).is_file():
        return []
    with open(path, errors="replace") as f:
        return [ln.rstrip() for ln in deque(f, maxlen=lines)]


def why_failed(log: str | None, lines: int) -> list[str]:
    """The run's own one-line error (`afdcd-bench: error: ...`, what the CLI prints) when the log has
    one, else the log's last lines."""
    last = tail(log, 400)
    said = [ln for ln in last if ln.startswith("afdcd-bench: ")]
    return said[-1:] if said else last[-lines:]


def _waited(share: float | None) -> str:
    """The share of the training seconds spent waiting for batches (engine/records.data_wait)."""
    return f"data wait {100 * share:.0f}% of the steps' time" if share is not None else ""


def _progress(run: PlannedRun, log: str | None) -> tuple[int | None, str]:
    """The step reached (the log's last step line, else the saved state's) and an ETA from the saved
    state's training seconds per step (with the share of it spent waiting for data)."""
    step = None
    for line in reversed(tail(log, 200)):
        m = STEP_LINE.search(line)
        if m:
            step = int(m.group(1))
            break
    state = latest_state(Path(run.run_dir))
    eta = ""
    if state is not None:
        progress = json.loads((state / "progress.json").read_text())
        saved = progress.get("step") or 0
        step = max(step or 0, saved)
        if saved and progress.get("train_seconds"):  # steps and validations so far, at the same pace
            left = (run.iterations - step) * (progress["train_seconds"] + progress.get("eval_seconds", 0.0)) / saved
            eta = f"~{datetime.timedelta(seconds=int(left))} left"
        eta = ", ".join(filter(None, [eta, _waited(data_wait(progress)["data_wait_share"])]))
    return step, eta


def _alive_here(pid: int | None, host: str | None) -> bool | None:
    """Whether a process of this machine lives (None: on another machine, so this cannot tell)."""
    if not pid:
        return False
    if host is not None and host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unfinished(job: dict, submitter: dict) -> tuple[str, str]:
    """A run jobs.json lists as queued or running, with no record and no lock held: starting (its
    process lives but has not taken its lock yet), queued (its reproduce lives and will start it),
    stopped (both gone) or unknown (they ran on another machine)."""
    host = submitter.get("host")
    own = _alive_here(job.get("pid"), host)
    if own:
        return "running", "starting (its process lives; no step yet)"
    parent = _alive_here(submitter.get("pid"), host)
    if parent:
        return "queued", f"its reproduce (pid {submitter['pid']}) starts it when a slot frees"
    if own is None or parent is None:
        return "unknown", f"it was started on {host}: ask there (this machine cannot see its processes)"
    return "failed", "its executor stopped before the run ended; rerun the reproduce command to resume it"


def plan_status(results_dir: Path, lines: int = 5) -> list[RunStatus]:
    plan = load_plan(results_dir)
    jobs_file = read_jobs(results_dir)
    jobs, submitter = jobs_file["runs"], jobs_file.get("submitter") or {}
    out: dict[str, RunStatus] = {}
    for run in plan.runs:  # dependencies come first in a plan
        job = jobs.get(run.key, {})
        st = RunStatus(run.key, "not started", job.get("job_id"))
        if Path(run.record).is_file():
            try:
                st.state, st.detail = "done", _waited(read_record(Path(run.record)).get("data_wait_share"))
            except RecordError as exc:
                st.state, st.detail = "failed", f"damaged record: {exc}"
            out[run.key] = st
            continue
        slurm_state, reason = "", ""
        if st.job_id:
            from .slurm import job_state

            slurm_state, reason = job_state(st.job_id)
        failed_need = next((n for n in run.needs if out.get(n) and out[n].state in ("failed", "never starts")), None)
        if slurm_state == "RUNNING" or _lock_held(Path(run.run_dir)):
            st.state = "running"
            st.step, st.eta = _progress(run, job.get("log"))
        elif failed_need:
            st.state, st.detail = "never starts", f"{failed_need} {out[failed_need].state}"
        elif slurm_state in ("PENDING", "REQUEUED", "CONFIGURING"):
            st.state, st.detail = "queued", reason
        elif slurm_state == UNKNOWN:  # could not find out: said, never read as failed
            st.state, st.detail = "unknown", reason
        elif slurm_state and slurm_state != "COMPLETED" or job.get("state") in ("failed", "preempted"):
            st.state = "failed"
            st.detail = " | ".join(filter(None, [slurm_state or job.get("state"), *why_failed(job.get("log"), lines)]))
        elif job.get("state") == "not started":
            st.state, st.detail = "never starts", job.get("detail", "")
        elif job.get("state") in ("queued", "running"):
            st.state, st.detail = _unfinished(job, submitter)
        out[run.key] = st
    return list(out.values())


def print_status(results_dir: Path, lines: int = 5, console: Console | None = None) -> int:
    console = console or Console(width=max(Console().width, 150))
    statuses = plan_status(results_dir, lines)
    t = Table(title=f"{results_dir}: {sum(s.state == 'done' for s in statuses)}/{len(statuses)} done")
    for col in ("run", "state", "job", "step", "ETA", "detail"):
        t.add_column(col, overflow="fold")
    for s in statuses:
        t.add_row(s.key, s.state, s.job_id or "-", "-" if s.step is None else str(s.step), s.eta or "-", s.detail or "")
    console.print(t)
    return 0


def wait_for_jobs(results_dir: Path, console: Console, poll_seconds: float = 5.0) -> list[RunStatus]:
    """Until no run of the plan is queued or running (`reproduce --executor slurm --wait`)."""
    import time

    seen: dict[str, str] = {}
    while True:
        statuses = plan_status(results_dir)
        for s in statuses:
            if seen.get(s.key) != s.state:
                console.log(f"{s.key}: {s.state}{f' (job {s.job_id})' if s.job_id else ''}{f' {s.detail}' if s.detail and s.state != 'failed' else ''}")
                seen[s.key] = s.state
        if not any(s.state in ("running", "queued") for s in statuses):
            return statuses
        time.sleep(poll_seconds)
