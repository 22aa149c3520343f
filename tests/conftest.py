import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The digits benchmark is generated once per session into a shared temporary cache; under
    # pytest-xdist the workers share one (its files are written atomically, the same bytes by each).
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "afdcd-cache"
    monkeypatch.setenv("AFDCD_CACHE", str(cache))


# scripts/test.sh runs the suite on 2 pytest-xdist workers (--dist loadgroup). accelerate's
# debug_launcher always rendezvouses on port 29500, so the tests that use it run on one worker;
# so do the tests of the one SLURM node (its jobs would queue behind each other's and time out).
SAME_WORKER = {"test_distributed": "port-29500", "test_methods": "port-29500", "test_slurm": "slurm",
               "test_slurm_jobs": "slurm"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = SAME_WORKER.get(item.module.__name__) or ("slurm" if item.get_closest_marker("slurm") else None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


# Tiny settings shared by the tests that train methods on digits (tests/test_methods.py, test_maskd.py).
TINY = ["data.crop_size=[32, 32]", "train.optimizer=sgd", "train.lr=0.01", "train.iterations=2", "train.effective_batch=4",
        "train.val_interval=2", "train.checkpoint_interval=1", "student.backbone=resnet10t", "eval.batch_size=100",
        "teacher.backbone=resnet10t", "student.pretrained=false", "eval.teacher_check=false"]


def reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A ResNet-10t digits teacher trained for one step: the checkpoint's path."""
    from afdcd_bench.config import load_recipe
    from afdcd_bench.engine import train

    out = tmp_path_factory.mktemp("teacher")
    cfg = load_recipe("demo/teacher", [*TINY, "train.iterations=1", "train.checkpoint_interval=1", f"output_dir={out}"])
    train(cfg, show_progress=False)
    reset_accelerate()
    return out / "demo/teacher/seed0/final.safetensors"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node SLURM of scripts/slurm_local.sh, started when it is not running (it needs root)."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts/slurm_local.sh"
    res = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"scripts/slurm_local.sh failed: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    return True


@pytest.fixture(scope="session")
def inprocess_chain(tmp_path_factory):
    """teacher, baseline and KD of the demo at tiny settings trained in one process, one after another
    (one CPU thread): the reference records of the executor tests, and a teacher for them to reuse."""
    from scale_helpers import reproduce

    tmp = tmp_path_factory.mktemp("inprocess-chain")
    reproduce(tmp, "a", "--executor", "inprocess", "--methods", "kd")
    return tmp / "a"
