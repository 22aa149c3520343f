"""Reproductions started as a user starts them (`afdcd-bench reproduce` in its own process, one CPU
thread per process), shared by the executor tests (tests/test_executors.py, tests/test_slurm.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every run of the chain: a few steps at 32x32, ResNet-10t teacher and students, a log line per step
CHAIN = ["data.crop_size=[32, 32]", "train.iterations=4", "train.effective_batch=4", "train.val_interval=2",
         "train.checkpoint_interval=2", "train.log_interval=1", "eval.batch_size=100", "student.backbone=resnet10t",
         "teacher.backbone=resnet10t", "student.pretrained=false", "eval.teacher_check=false"]


def reproduce(tmp: Path, tag: str, *flags: str, extra: list[str] = (), check: bool = True, timeout: int = 900,
              popen: bool = False):
    """`afdcd-bench reproduce demo` into tmp/tag (records in tmp/tag/res, runs in tmp/tag/runs)."""
    cmd = [sys.executable, "-m", "afdcd_bench", "reproduce", "demo", "--seeds", "1", "--results-dir", str(tmp / tag / "res"),
           "--output-dir", str(tmp / tag / "runs"), *flags, *CHAIN, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


def records(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*__seed*.json"))}


def same_runs(a: dict[str, dict], b: dict[str, dict]) -> None:
    """The same records by what they computed: the weights (by hash), every validation, the scores."""
    assert a.keys() == b.keys() and a
    for name in a:
        for key in ("checkpoint_sha256", "best_checkpoint_sha256", "history", "final_miou", "best_miou", "final_iou"):
            assert key in a[name] and key in b[name], (name, key, "missing")  # a key absent on both sides proves nothing
            assert a[name][key] == b[name][key], (name, key, a[name][key], b[name][key])


def fail_teacher(runs: Path) -> None:
    """The teacher alone fails: its run folder holds a stopped state of other settings, which it refuses to resume."""
    state = runs / "demo/teacher/seed0/state"
    state.mkdir(parents=True)
    (state / "progress.json").write_text(json.dumps({"step": 1, "settings": {"train": {"lr": 123.0}}}))
    (state / "COMPLETE").write_text("ok\n")
