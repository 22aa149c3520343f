"""A run stops on a scheduler's signal at a step boundary, saved, and resumes to the weights of an
uninterrupted run (engine/stopping.py)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from afdcd_bench.config import load_recipe
from afdcd_bench.engine import TrainHooks, train
from afdcd_bench.engine.checkpointing import latest_state
from afdcd_bench.engine.stopping import EXIT_PREEMPTED, TrainingPreempted
from conftest import reset_accelerate

ROOT = Path(__file__).resolve().parents[1]
# checkpoints only at the end: a stop at step 2 must save by itself
TINY = ["data.crop_size=[32, 32]", "train.iterations=4", "train.effective_batch=4", "train.val_interval=2",
        "train.checkpoint_interval=4", "train.log_interval=1", "student.backbone=resnet10t", "eval.batch_size=50",
        "student.pretrained=false"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _signal_once_training(proc: subprocess.Popen, sig: int) -> tuple[str, str]:
    """Send `sig` once the per-step log line says step 3 of 400 ran; the process's remaining output."""
    try:
        for line in proc.stdout:
            if "step 3/400" in line:
                break
        proc.send_signal(sig)
        return proc.communicate(timeout=120)
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])  # SIGINT: Ctrl-C
def test_a_signal_saves_at_the_step_it_came_in_and_the_rerun_ends_where_an_unstopped_run_does(tmp_path, sig):
    straight = train(load_recipe("demo/baseline", [*TINY, f"output_dir={tmp_path / 'a'}"]), results_dir=tmp_path / "ra",
                     show_progress=False)
    reset_accelerate()
    cfg = load_recipe("demo/baseline", [*TINY, f"output_dir={tmp_path / 'b'}"])
    before = signal.getsignal(sig)

    def signal_in_step_2(micro):
        if micro == 1:
            os.kill(os.getpid(), sig)

    with pytest.raises(TrainingPreempted, match=f"stopped by {sig.name} at step 2, its state saved; rerun the same command to resume from step 2"):
        train(cfg, results_dir=tmp_path / "rb", show_progress=False, hooks=TrainHooks(before_update=signal_in_step_2))
    reset_accelerate()
    assert signal.getsignal(sig) == before  # the run's handler is gone with the run
    run = tmp_path / "b/demo/baseline/seed0"
    assert json.loads((latest_state(run) / "progress.json").read_text())["step"] == 2  # saved although no checkpoint was due
    assert not (tmp_path / "rb").exists() or not any((tmp_path / "rb").iterdir())  # no record of a stopped run
    resumed = train(cfg, results_dir=tmp_path / "rb", show_progress=False)
    reset_accelerate()
    assert resumed["resumed_from_step"] == 2
    _same_weights(tmp_path / "a/demo/baseline/seed0/final.safetensors", run / "final.safetensors")
    assert [h["miou"] for h in resumed["history"]] == [h["miou"] for h in straight["history"]]
    assert resumed["launch"] == {"executor": "manual", "job_id": None, "nodes": 1, "gpus": 0, "processes": 1}


def test_the_command_exits_75_on_sigterm_and_says_how_to_resume(tmp_path):
    """The real CLI in its own process, stopped from outside while it trains."""
    cmd = [sys.executable, "-m", "afdcd_bench", "train", "demo/baseline", *TINY, "train.iterations=400", "train.checkpoint_interval=400",
           f"output_dir={tmp_path}", "--results-dir", str(tmp_path / "res")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = _signal_once_training(proc, signal.SIGTERM)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "stopped by SIGTERM at step" in err and "rerun the same command to resume" in err
    step = json.loads((latest_state(tmp_path / "demo/baseline/seed0") / "progress.json").read_text())["step"]
    assert 3 <= step < 400


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    cfg = load_recipe("demo/baseline", [*TINY, f"output_dir={tmp_path}"])

    def twice_in_step_2(micro):
        if micro == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="interrupted at step 1"):
        train(cfg, show_progress=False, hooks=TrainHooks(before_update=twice_in_step_2))
    reset_accelerate()
    assert latest_state(tmp_path / "demo/baseline/seed0") is None  # nothing saved: the user asked for that


def test_ctrl_c_in_the_in_process_reproduction_saves_the_steps_run(tmp_path):
    """The demo's default executor: Ctrl-C while the teacher trains saves it at that step."""
    from scale_helpers import reproduce

    proc = reproduce(tmp_path, "a", "--executor", "inprocess", "--methods", "kd", extra=["train.iterations=400",
                     "train.checkpoint_interval=400"], popen=True)
    out, _ = _signal_once_training(proc, signal.SIGINT)
    assert proc.returncode == EXIT_PREEMPTED, out[-2000:]
    assert "stopped by SIGINT at step" in out and "its state saved" in out
    step = json.loads((latest_state(tmp_path / "a/runs/demo/teacher/seed0") / "progress.json").read_text())["step"]
    assert 3 <= step < 400


def test_a_signal_while_a_slurm_task_starts_its_training_stops_it_after_one_saved_step(tmp_path):
    """SLURM signals every process of a job, a child still importing too: born with the stop signals
    blocked, it keeps the signal and stops after its first step, saved (unblocked, Python's default
    would end it at once; never unblocked, it would train to the end)."""
    from afdcd_bench.harness.slurm import start_command

    argv = ["train", "demo/baseline", *TINY, "train.iterations=400", "train.checkpoint_interval=400", f"output_dir={tmp_path}"]
    child = start_command(argv, {**os.environ, "OMP_NUM_THREADS": "1"})
    child.send_signal(signal.SIGUSR1)  # at once: the interpreter has not even started
    try:
        assert child.wait(timeout=120) == EXIT_PREEMPTED
    finally:
        child.kill()
    assert json.loads((latest_state(tmp_path / "demo/baseline/seed0") / "progress.json").read_text())["step"] == 1
