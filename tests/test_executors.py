"""The local executor against running the plan in one process: the same records, runs side by side
where the plan allows, a failed run stopping its dependents only, and a stopped reproduction
leaving no training behind (harness/execution.py, harness/executors.py)."""
import datetime
import json
import os
import signal
import time

import pytest

from afdcd_bench.harness.plan import PlannedRun, Resources, projected_wall
from scale_helpers import fail_teacher, records, reproduce, same_runs

pytestmark = pytest.mark.slow


def _started(log: str) -> datetime.datetime:
    first = next(ln for ln in open(log) if ln.startswith("# "))
    return datetime.datetime.fromisoformat(first.split()[1])


def test_parallel_2_writes_the_records_of_one_run_at_a_time_and_runs_side_by_side(tmp_path, inprocess_chain):
    reproduce(tmp_path, "b", "--executor", "local", "--parallel", "2", "--methods", "kd")
    mine = records(tmp_path / "b/res")
    same_runs(records(inprocess_chain / "res"), mine)
    assert {r["launch"]["executor"] for r in mine.values()} == {"local"}
    # each of the two runs side by side was pinned to its half of the cores, and its loader counted on that
    assert {r["loader"]["cores"] for r in mine.values()} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    jobs = json.loads((tmp_path / "b/res/jobs.json").read_text())["runs"]
    # the baseline needs no teacher: it started while the teacher trained; KD only after the teacher ended
    teacher_end = datetime.datetime.fromisoformat(mine["demo__teacher__seed0.json"]["finished_at"])
    assert _started(jobs["demo/baseline@seed0"]["log"]) < teacher_end <= _started(jobs["demo/kd@seed0"]["log"])


def test_a_failed_run_stops_its_dependents_only_and_the_end_says_how_to_rerun(tmp_path):
    fail_teacher(tmp_path / "c/runs")
    res = reproduce(tmp_path, "c", "--executor", "local", "--parallel", "2", "--methods", "kd", check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert sorted(records(tmp_path / "c/res")) == ["demo__baseline__seed0.json"]
    assert "- demo/teacher@seed0: failed" in out and "/runs/demo/teacher/seed0/logs/local.log" in out
    assert "- demo/kd@seed0: not started (needs demo/teacher@seed0, which failed)" in out
    assert "alone: " in out and "train demo/teacher" in out  # the command to rerun it by itself
    from afdcd_bench.cli import main

    assert main(["status", str(tmp_path / "c/res")]) == 0


def test_stopping_reproduce_stops_its_runs_after_they_saved(tmp_path):
    """SIGTERM to `reproduce` (as a scheduler or `kill` sends it): its runs get SIGTERM, save at the
    end of their step and end; nothing keeps training (the rerun that resumes such a run: the SIGKILL
    test below)."""
    proc = reproduce(tmp_path, "d", "--executor", "local", "--parallel", "2", "--methods", "baseline", popen=True,
                     extra=["train.iterations=400", "train.checkpoint_interval=400"])
    log = tmp_path / "d/runs/demo/baseline/seed0/logs/local.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "step 3/400" in log.read_text()):
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-3000:]
    assert "stopping demo/baseline@seed0" in out and "stopping demo/teacher@seed0" in out
    assert "stopped by SIGTERM at step" in log.read_text()
    lock = tmp_path / "d/runs/demo/baseline/seed0.lock"
    assert lock.read_text() == ""  # released: no process of the run is left
    progress = json.loads((tmp_path / "d/runs/demo/baseline/seed0/state/progress.json").read_text())
    assert 3 <= progress["step"] < 400


def test_a_killed_reproduce_leaves_no_training_behind_and_the_rerun_resumes(tmp_path):
    """SIGKILL to `reproduce` alone (no handler of its own runs): the kernel's parent-death signal
    ends its launchers at once and has its runs save at the end of their step; the rerun resumes them."""
    proc = reproduce(tmp_path, "k", "--executor", "local", "--parallel", "2", "--methods", "baseline", popen=True,
                     extra=["train.iterations=40", "train.checkpoint_interval=40", "train.val_interval=40"])
    run = tmp_path / "k/runs/demo/baseline/seed0"
    log = run / "logs/local.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "step 3/40" in log.read_text()):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    from afdcd_bench.harness.status import _lock_held

    deadline = time.time() + 120
    while time.time() < deadline and (_lock_held(run) or _lock_held(tmp_path / "k/runs/demo/teacher/seed0")):
        time.sleep(0.5)
    assert not _lock_held(run) and not _lock_held(tmp_path / "k/runs/demo/teacher/seed0"), "a run outlived its reproduce"
    assert "stopped by SIGTERM at step" in log.read_text()
    saved = json.loads((run / "state/progress.json").read_text())["step"]
    assert 3 <= saved < 40
    again = reproduce(tmp_path, "k", "--executor", "local", "--parallel", "2", "--methods", "baseline",
                      extra=["train.iterations=40", "train.checkpoint_interval=40", "train.val_interval=40"])
    assert again.returncode == 0
    assert records(tmp_path / "k/res")["demo__baseline__seed0.json"]["resumed_from_step"] == saved


def test_a_dry_run_after_the_reproduction_projects_nothing_for_recorded_runs(inprocess_chain):
    from rich.console import Console

    from afdcd_bench.harness.reproduce import reproduce

    console = Console(record=True, width=250)
    reproduce("demo", seeds=1, methods=["kd"], results_dir=str(inprocess_chain / "res"), output_dir=str(inprocess_chain / "runs"),
              dry_run=True, console=console)
    text = console.export_text()
    rows = [line for line in text.splitlines() if "@seed" in line]
    assert len(rows) == 3 and all("recorded: demo__" in line and " 0.00 " in line for line in rows), rows
    assert "3 of the 3 run(s) have a record already" in text


def test_the_table_of_a_reproduction_lists_the_runs_it_planned_not_every_recipe(inprocess_chain, tmp_path):
    import csv

    from afdcd_bench.cli import main

    assert main(["table", str(inprocess_chain / "res"), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert sorted(r["method"] for r in rows) == ["baseline", "kd", "teacher"]  # --methods kd: no empty dist, cwd, afdcd rows
    assert all(r["n"] == "1" for r in rows)


def test_the_projected_wall_time_follows_dependencies_and_free_gpus():
    r = Resources(gpus=1)

    def run(name, needs=()):
        return PlannedRun(name, 0, [], list(needs), r)

    runs = [run("t"), run("a", ["t@seed0"]), run("b", ["t@seed0"]), run("c")]
    hours = {"t@seed0": 2.0, "a@seed0": 1.0, "b@seed0": 1.0, "c@seed0": 3.0}
    assert projected_wall(runs, hours, 1) == 7.0
    assert projected_wall(runs, hours, 2) == 4.0  # t, then a; c beside them from the start, then b
    assert projected_wall(runs, hours, 8) == 3.0
