"""`afdcd-bench launch` (harness/launcher.py) around a real `accelerate launch` of 2 CPU processes:
a failure is one sentence, last and once, the launcher's blocks kept in the log only; a stalled
process is announced by its peer, which gives up at train.collective_timeout (engine/collectives.py)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "afdcd_bench", "launch", "--num_processes", "2", "--multi_gpu", "--num_machines", "1"]


def _port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_a_failed_launch_ends_with_the_runs_one_sentence_and_keeps_the_rest_in_its_log(tmp_path):
    cmd = [*LAUNCH, "--main_process_port", _port(), "train", "demo/kd", *TINY, "teacher.checkpoint=/nope.safetensors",
           f"output_dir={tmp_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    said = "afdcd-bench: error: teacher checkpoint /nope.safetensors not found"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines[-1].startswith(said) and (res.stdout + res.stderr).count(said) == 1, res.stderr[-2000:]
    log = tmp_path / "demo/kd/seed0.launch.log"
    assert lines[-2] == f"afdcd-bench: the launch's whole output: {log}"
    for noise in ("Traceback", "ChildFailedError", "The following values were not passed", "torch/distributed/elastic"):
        assert noise not in res.stdout + res.stderr, noise
    kept = log.read_text()
    assert kept.count(said) == 2  # each process said it
    hidden = [ln for ln in kept.splitlines() if ln.strip() and ln not in res.stdout + res.stderr]
    assert len(hidden) >= 5, kept[-2000:]  # the launcher's own report, off the screen, is kept in the log


@pytest.mark.slow
def test_a_stalled_process_is_announced_by_its_peer_which_gives_up_at_the_collective_timeout(tmp_path):
    cmd = [*LAUNCH, "--main_process_port", _port(), "train", "demo/baseline", *TINY, "train.iterations=200",
           "train.val_interval=200", "train.checkpoint_interval=2", "train.log_interval=1", "train.collective_timeout=12",
           f"output_dir={tmp_path}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    train_log, launch_log = tmp_path / "demo/baseline/seed0/logs/train.log", tmp_path / "demo/baseline/seed0.launch.log"
    rank1 = None
    try:
        while not (train_log.is_file() and "step 3/200" in train_log.read_text()):
            assert proc.poll() is None and time.monotonic() - t0 < 180, "the run never reached step 3"
            time.sleep(0.5)
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == "1" and "afdcd_bench" in " ".join(child.cmdline()):
                    rank1 = child
            except psutil.Error:
                pass
        assert rank1 is not None
        rank1.send_signal(signal.SIGSTOP)  # stalled: alive, answering nothing
        stopped = time.monotonic()
        while "gave up" not in launch_log.read_text():
            assert time.monotonic() - stopped < 120, "rank 0 never gave up"
            time.sleep(0.5)
        waited = time.monotonic() - stopped
        rank1.send_signal(signal.SIGCONT)  # so that the launcher's SIGTERM reaches it
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 12 <= waited < 60
    assert "has finished no step for" in err and "it gives up after train.collective_timeout=12 s" in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("afdcd-bench: error: demo/baseline: process 0 waited train.collective_timeout=12 s at step "), err[-3000:]
    assert "rerun the same command to resume from step" in lines[-1] and proc.returncode == 2
    assert "Timed out waiting" not in out + err and "Traceback" not in out + err


def test_one_process_launch_output_is_read_as_the_run_said_it():
    """accelerate's single-process launcher, as it printed here: its defaults warning, the run's
    sentence, its CalledProcessError traceback; a crash of the run itself stays on screen."""
    import io

    from afdcd_bench.harness.launcher import LaunchOutput, describe_exit

    seen = io.StringIO()
    out = LaunchOutput(seen)
    for line in ["The following values were not passed to `accelerate launch` and had defaults used instead:",
                 "\t`--num_processes` was set to a value of `0`",
                 "To avoid this warning pass in values for each of the problematic parameters or run `accelerate config`.",
                 "step 1/4 task 2.3", "afdcd-bench: error: teacher checkpoint /x not found",
                 "Traceback (most recent call last):", '  File "launch.py", line 999, in simple_launcher',
                 "    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)",
                 "subprocess.CalledProcessError: Command '['python', '-m', 'afdcd_bench']' returned non-zero exit status 2."]:
        out.line(line + "\n")
    out.finish()
    assert seen.getvalue() == "step 1/4 task 2.3\n"
    assert out.sentences == ["afdcd-bench: error: teacher checkpoint /x not found"] and out.exits == [(None, 2)]
    # two processes' sentences written into one line (seen once under load): still one sentence
    joined = LaunchOutput(io.StringIO())
    joined.line("afdcd-bench: error: teacher checkpoint /x not foundafdcd-bench: error: teacher checkpoint /x not found\n")
    assert joined.sentences == ["afdcd-bench: error: teacher checkpoint /x not found"] and joined.show.getvalue() == ""
    crash = LaunchOutput(io.StringIO())
    for line in ["Traceback (most recent call last):", '  File "x.py", line 1, in f', "ZeroDivisionError: division by zero"]:
        crash.line(line + "\n")
    assert "ZeroDivisionError" in crash.show.getvalue() and not crash.launcher_failed
    assert describe_exit(-9).startswith("was ended by SIGKILL (killed from outside") and describe_exit(3) == "exited with status 3"


def test_the_stall_watch_speaks_when_no_step_finished_and_names_long_work_between_steps(monkeypatch):
    """On a clock of the test's own (no sleeps whose margins a loaded machine could eat), then once
    on its real thread with a wide margin."""
    from types import SimpleNamespace

    from afdcd_bench.engine import collectives
    from afdcd_bench.engine.collectives import StallWatch, is_collective_timeout, is_peer_gone

    clock = [100.0]
    monkeypatch.setattr(collectives, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def at(seconds_later):
        clock[0] += seconds_later
        watch.check(clock[0])

    said = []
    watch = StallWatch("r", 1, timeout_s=2.0, say=said.append, after=0.3)
    with watch.during("validation"):  # said only after half the timeout
        at(0.8)
        assert said == []
        at(0.6)
        assert len(said) == 1 and said[0].startswith("afdcd-bench: r: process 1 has been in validation for 1 s (after step 0)")
    at(0.2)
    assert len(said) == 1  # 0.2 s without a step: nothing yet
    at(0.2)
    assert len(said) == 2 and said[1].startswith("afdcd-bench: r: process 1 has finished no step for 0 s (after step 0")
    at(0.1)
    assert len(said) == 2  # then only after twice as long (0.6 s), not every interval
    at(0.2)
    assert len(said) == 3 and "for 1 s" in said[2]
    watch.touch(1)
    at(0.2)
    assert len(said) == 3  # a step finished: the count starts over

    monkeypatch.undo()
    real = []
    with StallWatch("r", 0, timeout_s=60.0, say=real.append, after=0.2):
        for _ in range(100):
            if real:
                break
            time.sleep(0.1)
    assert real and "has finished no step" in real[0]
    assert is_collective_timeout(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv"))
    assert is_peer_gone(RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:42718."))
    assert not is_collective_timeout(ValueError("Timed out waiting")) and not is_peer_gone(RuntimeError("CUDA out of memory"))


def test_launch_reads_the_train_commands_arguments_as_train_does_and_refuses_before_starting(tmp_path, capsys):
    from afdcd_bench.cli import main

    # an override after an option, as `train` takes it; the recipe error comes before any process starts
    assert main(["launch", "--num_processes", "2", "train", "demo/baseline", "--results-dir", str(tmp_path),
                 "train.nosuch=1"]) == 2
    assert "train.nosuch" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["launch", "--num_processes", "2", "demo/baseline"]) == 2  # no train command: the usage
    assert "usage: afdcd-bench launch" in capsys.readouterr().err


def test_a_collective_timeout_must_be_positive():
    from afdcd_bench.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="train.collective_timeout"):
        load_recipe("demo/baseline", ["train.collective_timeout=0"])
