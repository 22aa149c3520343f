import os
import sys

import pytest
import torch

# Two threads for a lone pytest; one per pytest-xdist worker (scripts/test.sh runs two): two
# workers of two threads each on 2 cores ran the suite slower than one pytest (measured).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The digits benchmark is generated once per session into a shared temporary cache; under
    # pytest-xdist the workers share one (its files are written atomically, the same bytes by each).
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "afdcd-cache"
    monkeypatch.setenv("AFDCD_CACHE", str(cache))


# scripts/test.sh spreads the suite's files over two pytest-xdist workers as they come free
# (--dist loadfile): the longest files first (each measured over 3 minutes of tests on this 2-core
# machine), so that no long file starts last while the other worker has nothing left.
LONGEST_FIRST = ["test_distributed.py", "test_slurm.py", "test_methods.py", "test_cli.py", "test_gpu_check.py",
                 "test_executors.py", "test_budget.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


# Tiny settings shared by the tests that train methods on digits (tests/test_methods.py, test_maskd.py).
TINY = ["data.crop_size=[32, 32]", "train.optimizer=sgd", "train.lr=0.01", "train.iterations=2", "train.effective_batch=4",
        "train.val_interval=2", "train.checkpoint_interval=1", "student.backbone=resnet10t", "eval.batch_size=100",
        "teacher.backbone=resnet10t", "student.pretrained=false", "eval.teacher_check=false"]


def reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one process-wide state: a test whose run failed after building its Accelerator
    (a refused recipe, a missing cache) would hand its precision to the next test of the worker."""
    yield
    if "accelerate.state" in sys.modules:
        reset_accelerate()


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
