"""SLURM through submitit: one job per run, `afterok` on the jobs of what it needs, so `reproduce` can
submit and return. One SLURM task per process, each given torch's rendezvous variables from SLURM's
(as mmseg's slurm_train.sh does with srun); why this and not one `accelerate launch` per node:
docs/scale.md. Before a time limit SLURM sends SIGUSR1 (`--signal`); the run saves at the end of its
step and the job requeues itself; `scontrol requeue` and preemption send SIGTERM, and the run saves
likewise. The requeued job resumes from that state (engine/stopping.py)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..engine.stopping import EXIT_PREEMPTED, STOP_SIGNALS
from .executors import DONE, FAILED, QUEUED, RUNNING, UNKNOWN, Handle
from .plan import PlannedRun, Resources

# submitit reads the signal it asks SLURM for when it is imported, in the submitter and in the job
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "USR1"
import submitit  # noqa: E402

SLURM_STATES = {"PENDING": QUEUED, "CONFIGURING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED, "REQUEUE_FED": QUEUED,
                "RESIZING": QUEUED, "SUSPENDED": QUEUED, "RUNNING": RUNNING, "COMPLETING": RUNNING, "STOPPED": RUNNING,
                "COMPLETED": DONE}


class SlurmRun(submitit.helpers.Checkpointable):
    """The job's callable, in each SLURM task: one training process with this task's rank."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.argv = argv
        self.env = env
        self.child: subprocess.Popen | None = None

    def rendezvous(self) -> dict[str, str]:
        job = submitit.JobEnvironment()
        env = {"RANK": str(job.global_rank), "LOCAL_RANK": str(job.local_rank), "WORLD_SIZE": str(job.num_tasks),
               "LOCAL_WORLD_SIZE": str(job.num_tasks // max(1, job.num_nodes)), "MASTER_ADDR": job.hostnames[0],
               "MASTER_PORT": str(20000 + int(str(job.job_id).split("_")[0]) % 20000)}
        if job.num_tasks > 1 and not os.environ.get("CUDA_VISIBLE_DEVICES"):
            env["ACCELERATE_USE_CPU"] = "1"  # CPU tasks synchronise over gloo
        return env

    def __call__(self) -> str:
        env = {**os.environ, **self.env, **self.rendezvous()}
        self.child = start_command(self.argv, env)
        _wait_exited(self.child.pid, None)
        rc = self.child.wait()
        if rc == EXIT_PREEMPTED:
            raise submitit.core.utils.UncompletedJobError("the run saved its state on a stop signal; the requeued job resumes it")
        if rc != 0:
            raise RuntimeError(f"afdcd-bench {' '.join(self.argv[:2])} exited with status {rc} (its output is above)")
        return "done"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on SIGUSR1 before requeueing: the training saves at the end of its
        step (SLURM signalled it too; it is told again here) and the job comes back to resume it."""
        if self.child is not None:
            try:
                os.kill(self.child.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
            _wait_exited(self.child.pid, time.monotonic() + float(os.environ.get("AFDCD_SAVE_SECONDS", "300")))
        return submitit.helpers.DelayedSubmission(SlurmRun(self.argv, self.env))


def start_command(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`afdcd-bench ARGV` in a child born with the stop signals blocked: SLURM signals every process of
    the job, and one that came while the child starts (before stopping.catch_early keeps them and
    unblocks) would otherwise end it unsaved rather than stop it after its first step."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return subprocess.Popen([sys.executable, "-m", "afdcd_bench", *argv], env=env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait_exited(pid: int, deadline: float | None) -> None:
    """Until the child has exited, without reaping it. Popen.wait would hold a lock that submitit's
    signal handler (checkpoint, run inside this very wait) could then never take."""
    while deadline is None or time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.2)


def check_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise ValueError("--executor slurm: sbatch is not on PATH (this machine is not a SLURM submit host); "
                         "scripts/slurm_local.sh starts a one-node SLURM for trying it")


def job_parameters(run: PlannedRun, need_jobs: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """submitit's SLURM parameters of a run: `nodes` nodes with one task per process on each (each task
    one training process, SlurmRun.rendezvous), afterok on the jobs it needs, requeue allowed."""
    res, o = run.resources, options
    extra: dict[str, Any] = {"requeue": True, **o.get("additional", {})}
    if need_jobs:
        extra["dependency"] = "afterok:" + ":".join(need_jobs)
    threads = o.get("cpus_per_task") or res.threads or 1
    params: dict[str, Any] = {
        "job_name": f"afdcd:{run.key}", "nodes": res.nodes, "ntasks_per_node": res.processes,
        "cpus_per_task": threads, "time": int(o.get("time", 24 * 60)),
        "signal_delay_s": int(o.get("signal_delay_s", 120)), "stderr_to_stdout": True, "additional_parameters": extra,
        "setup": [f"export OMP_NUM_THREADS={threads}"],
    }
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    for key in ("partition", "account", "qos", "constraint"):
        if o.get(key):
            params[key] = o[key]
    if o.get("mem_gb"):
        params["mem"] = f"{int(o['mem_gb'])}GB"
    return params


class SlurmExecutor:
    name = "slurm"
    waits_for_dependencies = True

    def __init__(self, results_dir: Path, resources: Resources, options: dict[str, Any]):
        check_slurm()
        self.results_dir = results_dir
        self.resources = resources
        self.options = dict(options)

    def capacity(self) -> int:
        return 1 << 30

    def parameters(self, run: PlannedRun, needs: list[Handle]) -> dict[str, Any]:
        return job_parameters(run, [h.job_id for h in needs if h.job_id], self.options)

    def submit(self, run: PlannedRun, needs: list[Handle]) -> Handle:
        folder = Path(run.run_dir) / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        ex = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=int(self.options.get("max_requeues", 20)))
        ex.update_parameters(**self.parameters(run, needs))
        try:
            job = ex.submit(SlurmRun(run.train_args(self.results_dir), {"AFDCD_EXECUTOR": self.name, "PYTHONUNBUFFERED": "1"}))
        except submitit.core.utils.FailedJobError as exc:
            hint = " (a cluster without GPUs: --gpus-per-run 0)" if "gres" in str(exc) and run.resources.gpus else ""
            raise ValueError(f"sbatch refused {run.key}: {str(exc).strip()}{hint}") from None
        return Handle(run.key, log=str(folder / str(job.job_id) / f"{job.job_id}_0_log.out"), job_id=str(job.job_id), state=QUEUED)

    def poll(self, handle: Handle) -> str:
        state, reason = job_state(handle.job_id or "")
        if state == UNKNOWN:  # not a verdict: keep what was known
            return handle.state
        handle.detail = "" if reason in ("None", "(null)") else reason
        handle.state = SLURM_STATES.get(state, FAILED if state else handle.state)
        return handle.state

    def cancel(self, handle: Handle) -> None:
        if handle.job_id:
            subprocess.run(["scancel", handle.job_id], check=False)


def job_state(job_id: str) -> tuple[str, str]:
    """(SLURM state, reason) from scontrol, which knows a job until MinJobAge after it ended; sacct
    (when the cluster keeps accounting) after that; (UNKNOWN, why) when neither can tell."""
    if not job_id:
        return "", ""
    if shutil.which("scontrol") is None:
        return UNKNOWN, f"SLURM's scontrol is not on PATH here, so job {job_id} cannot be asked about (run status where SLURM's tools are)"
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
        reason = fields.get("Reason", "")
        return fields.get("JobState", ""), "" if reason in ("None", "(null)") else reason
    if shutil.which("sacct"):
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State,Reason", "-j", job_id], capture_output=True, text=True)
        line = acct.stdout.strip().splitlines()[:1]
        if acct.returncode == 0 and line:
            state, _, reason = line[0].partition("|")
            return state.split()[0], reason
    return UNKNOWN, (f"SLURM no longer knows job {job_id} (it ended more than MinJobAge ago"
                     f"{'' if shutil.which('sacct') else ', and sacct is not on PATH'}) and it left no record")


def cancel_stranded(results_dir: Path, keys: set[str], log: Any) -> list[str]:
    """Jobs of an earlier submission of these runs that SLURM will never start (a dependency failed:
    DependencyNeverSatisfied) are cancelled before the runs are submitted anew, and said."""
    from .executors import read_jobs

    cancelled = []
    for key, job in read_jobs(results_dir)["runs"].items():
        job_id = job.get("job_id")
        if key not in keys or not job_id:
            continue
        state, reason = job_state(job_id)
        if state == "PENDING" and "DependencyNeverSatisfied" in reason:
            subprocess.run(["scancel", job_id], check=False)
            cancelled.append(job_id)
            log(f"{key}: cancelled SLURM job {job_id} of the earlier submission (it waited on a dependency that failed: "
                "DependencyNeverSatisfied); submitting it anew")
    return cancelled
