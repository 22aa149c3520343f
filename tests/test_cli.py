import os
import subprocess
import sys
from pathlib import Path

import pytest

from afdcd_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_missing_benchmark_data_is_one_clear_message(tmp_path, capsys):
    rc = main(["reproduce", "cityscapes", "--data-root", str(tmp_path / "cs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "cs") in err and "leftImg8bit" in err and "cityscapes-dataset.com" in err
    assert "Traceback" not in err


def test_reproduce_sh_without_data_exits_non_zero():
    env = dict(os.environ, AFDCD_DATA="/nonexistent-data")
    res = subprocess.run([str(ROOT / "reproduce.sh"), "ade20k"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert "/nonexistent-data/ADEChallengeData2016" in res.stderr and "Traceback" not in res.stderr


def test_unknown_override_is_named(capsys):
    assert main(["train", "demo/kd", "train.lerning_rate=1"]) == 2
    assert "train.lerning_rate" in capsys.readouterr().err


def test_recipes_listing(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "demo/afdcd" in out and "demo/teacher" in out


def test_demo_chain_end_to_end(tmp_path, capsys):
    from afdcd_bench.harness.reproduce import reproduce

    tiny = ["data.crop_size=[32, 32]", "train.iterations=2", "train.effective_batch=2", "train.val_interval=2",
            "train.checkpoint_interval=2", "eval.batch_size=100", "student.backbone=resnet10t", "teacher.backbone=resnet10t"]
    out = reproduce("demo", seeds=1, results_dir=str(tmp_path / "res"), output_dir=str(tmp_path / "runs"), extra=tiny)
    text = capsys.readouterr().out
    for method in ("teacher", "baseline", "kd", "afdcd"):
        assert method in text
    csv = (out / "table.csv").read_text()
    assert csv.count("\n") == 5  # header + 4 methods
    assert len(list(out.glob("*.json"))) == 4
