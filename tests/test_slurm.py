"""`reproduce --executor slurm` on a real one-node SLURM (scripts/slurm_local.sh): jobs with afterok
dependencies, records equal to one process's, a requeued job resuming to an uninterrupted run's
weights, a failed teacher leaving its students never started, two tasks equal to a two-process
launch (harness/slurm.py)."""
import json
import re
import subprocess
import time

import pytest

from afdcd_bench.harness.status import plan_status
from scale_helpers import fail_teacher, records, reproduce, same_runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SLURM = ["--executor", "slurm", "--slurm-config", "local", "--gpus-per-run", "0"]


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _jobs(res_dir) -> dict[str, str]:
    return {k: v["job_id"] for k, v in json.loads((res_dir / "jobs.json").read_text())["runs"].items()}


def _wait(res_dir, until, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        statuses = {s.key: s for s in plan_status(res_dir)}
        if until(statuses):
            return statuses
        time.sleep(1)
    raise AssertionError(f"timed out: {[(s.key, s.state, s.detail) for s in plan_status(res_dir)]}")


def _ended(statuses):
    return all(s.state not in ("queued", "running") for s in statuses.values())


def test_the_chain_runs_as_jobs_that_wait_for_the_teacher_and_equal_one_process(tmp_path, slurm_cluster, inprocess_chain):
    res = reproduce(tmp_path, "s", *SLURM, "--methods", "kd")  # submits and returns
    assert "afdcd-bench status" in res.stdout
    jobs = _jobs(tmp_path / "s/res")
    teacher, kd, baseline = jobs["demo/teacher@seed0"], jobs["demo/kd@seed0"], jobs["demo/baseline@seed0"]
    assert _job(kd)["Dependency"].startswith(f"afterok:{teacher}")  # SLURM holds KD for the teacher
    assert _job(baseline)["Dependency"] == "(null)"  # the baseline needs no teacher
    statuses = _wait(tmp_path / "s/res", _ended)
    assert {s.state for s in statuses.values()} == {"done"}
    assert _job(kd)["StartTime"] >= _job(teacher)["EndTime"]
    mine = records(tmp_path / "s/res")
    assert {r["launch"]["job_id"] for r in mine.values()} == set(jobs.values())
    assert {r["launch"]["executor"] for r in mine.values()} == {"slurm"}
    # the same three runs in one process, one CPU thread as each job has: the same weights and scores
    same_runs(records(inprocess_chain / "res"), mine)


LONGER = ["train.iterations=60", "train.val_interval=30", "train.checkpoint_interval=60"]  # no checkpoint before the end


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, inprocess_chain):
    """A 60-step baseline run straight through on this node (one thread); the teacher given, not trained."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    reproduce(tmp, "u", "--executor", "local", "--threads", "1", "--only", "baseline", "--teacher", _teacher(inprocess_chain),
              extra=LONGER)
    return tmp / "u"


def _teacher(chain) -> str:
    return str(chain / "runs/demo/teacher/seed0/best.safetensors")


def test_a_requeued_job_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, slurm_cluster, uninterrupted, inprocess_chain):
    teacher = _teacher(inprocess_chain)
    reproduce(tmp_path, "q", *SLURM, "--only", "baseline", "--teacher", teacher, extra=LONGER)
    job = _jobs(tmp_path / "q/res")["demo/baseline@seed0"]
    log = tmp_path / "q/runs/demo/baseline/seed0/slurm" / job / f"{job}_0_log.out"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "step 5/60" in log.read_text()):
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], check=True)  # SIGTERM now; the job goes back to the queue
    _wait(tmp_path / "q/res", lambda s: _job(job)["JobState"] == "PENDING" and int(_job(job)["Restarts"]) == 1)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)  # SLURM holds a requeued job ~2 min
    statuses = _wait(tmp_path / "q/res", _ended)
    assert statuses["demo/baseline@seed0"].state == "done"
    rec = records(tmp_path / "q/res")["demo__baseline__seed0.json"]
    assert rec["resumed_from_step"] >= 5  # saved at the step the signal came in, not at a checkpoint (none before 60)
    assert "stopped by SIGTERM at step" in log.read_text()
    same_runs({"b": records(uninterrupted / "res")["demo__baseline__seed0.json"]}, {"b": rec})


def test_a_job_near_its_time_limit_saves_requeues_itself_and_resumes(tmp_path, slurm_cluster, inprocess_chain):
    """SIGUSR1 75 s before a 2-minute limit (sbatch --signal, as submitit asks): the run saves at the
    end of its step, submitit requeues the job, and the requeued job resumes from that step. (That the
    resumed weights equal an uninterrupted run's is the requeue test's.) slurmctld looks at time
    limits periodically, so the signal comes seconds before or after it is due (measured: 9 s late,
    7 s early; one due 10 s in came while submitit was still starting, and the job died): due 45 s
    in here, in a run far longer than that, stopped once the requeued job has resumed."""
    teacher = _teacher(inprocess_chain)
    reproduce(tmp_path, "w", *SLURM, "--only", "baseline", "--teacher", teacher, "--time", "2", "--signal-delay", "75",
              extra=["train.iterations=5000", "train.val_interval=5000", "train.checkpoint_interval=5000"])
    job = _jobs(tmp_path / "w/res")["demo/baseline@seed0"]
    log = tmp_path / "w/runs/demo/baseline/seed0/slurm" / job / f"{job}_0_log.out"
    try:
        _wait(tmp_path / "w/res", lambda s: int(_job(job)["Restarts"]) == 1 and _job(job)["JobState"] == "PENDING", timeout=300)
        # the requeued job starts now rather than after SLURM's hold
        subprocess.run(["scontrol", "update", f"jobid={job}", "TimeLimit=10", "StartTime=now"], check=True)
        _wait(tmp_path / "w/res", lambda s: "resumed demo/baseline from" in log.read_text(), timeout=300)
        text = log.read_text()
        assert "stopped by SIGUSR1 at step" in text  # requeued: SLURM counts the restart (above), the run resumes (below)
        step = int(text.split("stopped by SIGUSR1 at step ")[1].split(",")[0])
        assert step >= 1
        resumed = re.search(r"resumed demo/baseline from .*?at\s+step\s+(\d+)", text, re.S)  # rich may wrap the line
        assert resumed and int(resumed.group(1)) == step
        assert {s.key: s.state for s in plan_status(tmp_path / "w/res")}["demo/baseline@seed0"] == "running"
    finally:
        subprocess.run(["scancel", job], check=False)


def test_a_failed_teacher_job_leaves_its_students_never_started_and_status_says_why(tmp_path, slurm_cluster):
    fail_teacher(tmp_path / "f/runs")
    reproduce(tmp_path, "f", *SLURM, "--methods", "kd")
    jobs = _jobs(tmp_path / "f/res")
    try:
        statuses = _wait(tmp_path / "f/res", lambda s: s["demo/teacher@seed0"].state == "failed" and s["demo/baseline@seed0"].state == "done")
        assert statuses["demo/kd@seed0"].state == "never starts"
        assert statuses["demo/kd@seed0"].detail == "demo/teacher@seed0 failed"
        assert "other settings" in statuses["demo/teacher@seed0"].detail  # the teacher's last log lines
        assert _job(jobs["demo/kd@seed0"])["JobState"] == "PENDING"  # SLURM never starts it
        assert _job(jobs["demo/kd@seed0"])["Reason"] == "DependencyNeverSatisfied"
        import shutil

        shutil.rmtree(tmp_path / "f/runs/demo/teacher/seed0")  # the fault mended: the rerun submits anew
        out = reproduce(tmp_path, "f", *SLURM, "--methods", "kd")
        said = " ".join((out.stdout + out.stderr).split())
        assert f"demo/kd@seed0: cancelled SLURM job {jobs['demo/kd@seed0']} of the earlier submission" in said, said[-3000:]
        assert _job(jobs["demo/kd@seed0"])["JobState"] == "CANCELLED"  # no job left pending for ever
        again = _jobs(tmp_path / "f/res")
        jobs.update({f"new {k}": v for k, v in again.items()})
        statuses = _wait(tmp_path / "f/res", _ended)
        assert statuses["demo/kd@seed0"].state == "done" and statuses["demo/teacher@seed0"].state == "done"
    finally:
        subprocess.run(["scancel", *jobs.values()], check=False)


def test_two_tasks_of_one_job_train_as_a_two_process_launch(tmp_path, slurm_cluster, inprocess_chain):
    teacher = _teacher(inprocess_chain)
    reproduce(tmp_path, "l", "--executor", "local", "--processes-per-run", "2", "--only", "baseline", "--teacher", teacher)
    reproduce(tmp_path, "t", *SLURM, "--processes-per-run", "2", "--only", "baseline", "--teacher", teacher)
    _wait(tmp_path / "t/res", _ended)
    local, slurm = records(tmp_path / "l/res"), records(tmp_path / "t/res")
    assert slurm["demo__baseline__seed0.json"]["launch"]["processes"] == 2
    assert slurm["demo__baseline__seed0.json"]["num_processes"] == 2
    same_runs({"b": local["demo__baseline__seed0.json"]}, {"b": slurm["demo__baseline__seed0.json"]})
