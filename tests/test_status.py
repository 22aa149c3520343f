"""`status` says what it could not find out: SLURM's tools missing, a run between its start and its
lock, the machine that ran it elsewhere; it never calls those failed, and names a bad plan or jobs file."""
import json
import os
import subprocess
import sys

import pytest

from afdcd_bench.harness.executors import Handle, write_jobs
from afdcd_bench.harness.plan import Plan, PlannedRun, Resources, load_plan
from afdcd_bench.harness.status import plan_status


def _plan(tmp_path):
    runs = [PlannedRun("demo/teacher", 0, [], [], Resources(), record=str(tmp_path / "teacher.json"),
                       run_dir=str(tmp_path / "runs/teacher/seed0"), iterations=4),
            PlannedRun("demo/kd", 0, [], ["demo/teacher@seed0"], Resources(), record=str(tmp_path / "kd.json"),
                       run_dir=str(tmp_path / "runs/kd/seed0"), iterations=4)]
    Plan("demo", tmp_path, runs).save()
    return runs


def test_slurm_tools_missing_is_unknown_not_failed(tmp_path, monkeypatch):
    _plan(tmp_path)
    write_jobs(tmp_path, "slurm", {"demo/teacher@seed0": Handle("demo/teacher@seed0", job_id="101", state="running"),
                                   "demo/kd@seed0": Handle("demo/kd@seed0", job_id="102", state="queued")})
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    states = {s.key: (s.state, s.detail) for s in plan_status(tmp_path)}
    assert states["demo/teacher@seed0"][0] == "unknown" and "scontrol is not on PATH" in states["demo/teacher@seed0"][1]
    assert states["demo/kd@seed0"][0] == "unknown"  # not "never starts": its teacher may well be running


def test_a_local_run_before_its_lock_its_queue_and_its_end(tmp_path):
    _plan(tmp_path)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        handles = {"demo/teacher@seed0": Handle("demo/teacher@seed0", state="running", process=alive),
                   "demo/kd@seed0": Handle("demo/kd@seed0", state="running", process=gone)}
        write_jobs(tmp_path, "local", handles)  # written by this process: its reproduce lives
        states = {s.key: (s.state, s.detail) for s in plan_status(tmp_path)}
        assert states["demo/teacher@seed0"] == ("running", "starting (its process lives; no step yet)")
        assert states["demo/kd@seed0"][0] == "queued" and f"pid {os.getpid()}" in states["demo/kd@seed0"][1]
        jobs = json.loads((tmp_path / "jobs.json").read_text())
        jobs["submitter"]["pid"] = gone.pid  # the reproduce that started them is gone too
        (tmp_path / "jobs.json").write_text(json.dumps(jobs))
        states = {s.key: (s.state, s.detail) for s in plan_status(tmp_path)}
        assert states["demo/teacher@seed0"][0] == "running"
        assert states["demo/kd@seed0"] == ("failed", "its executor stopped before the run ended; rerun the reproduce command "
                                                     "to resume it")
        jobs["submitter"]["host"] = "another-machine"  # processes this machine cannot see
        (tmp_path / "jobs.json").write_text(json.dumps(jobs))
        assert {s.key: s.state for s in plan_status(tmp_path)}["demo/kd@seed0"] == "unknown"
    finally:
        alive.kill()


@pytest.mark.parametrize("name, body", [("plan.json", "[1, 2]"), ("plan.json", '{"runs": [{"recipe": 1}]}'),
                                        ("plan.json", "not json"), ("jobs.json", '{"runs": []}'), ("jobs.json", "{")])
def test_a_bad_plan_or_jobs_file_is_named(tmp_path, capsys, name, body):
    from afdcd_bench.cli import main

    _plan(tmp_path)
    (tmp_path / name).write_text(body)
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / name} is not" in err and "Traceback" not in err


def test_a_plan_reads_back(tmp_path):
    runs = _plan(tmp_path)
    assert [r.key for r in load_plan(tmp_path).runs] == [r.key for r in runs]
