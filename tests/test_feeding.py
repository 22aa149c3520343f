"""The loader's workers from the cores a run is given (engine/feeding.py), the cores the local
executor gives each of its side-by-side runs (harness/executors.share_cores), and workers kept
between epochs drawing each epoch's own augmentation (data/base.py)."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from afdcd_bench.engine.feeding import CPUS_ENV, loader_facts, loader_options, loader_workers, process_cores
from afdcd_bench.harness.executors import share_cores

USABLE = len(os.sched_getaffinity(0))


@pytest.fixture
def clean_env(monkeypatch):
    for key in (CPUS_ENV, "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_a_process_counts_on_its_share_of_the_run_and_never_on_more_than_it_may_use(clean_env):
    assert process_cores() == USABLE
    clean_env.setenv(CPUS_ENV, "1")
    assert process_cores() == 1
    clean_env.setenv(CPUS_ENV, str(64 * USABLE))  # given more than this machine lets it run on
    assert process_cores() == USABLE
    clean_env.setenv(CPUS_ENV, str(2 * USABLE))
    clean_env.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of the run on this node share what it was given
    assert process_cores() == USABLE
    clean_env.setenv("SLURM_CPUS_PER_TASK", "1")  # a SLURM task is one process: its own figure
    assert process_cores() == 1


def test_auto_workers_leave_the_process_its_core_on_a_gpu_and_load_in_process_on_a_cpu(clean_env):
    clean_env.setenv(CPUS_ENV, "1")
    assert loader_workers("auto", on_gpu=True) == 0 and loader_workers(5) == 1  # a number is capped at the cores
    clean_env.setenv(CPUS_ENV, str(USABLE))
    assert loader_workers("auto", on_gpu=True) == USABLE - 1 and loader_workers("auto", on_gpu=False) == 0
    dc = SimpleNamespace(num_workers="auto", pin_memory="auto", persistent_workers="auto", prefetch_factor=None)
    assert loader_options(dc, 3, on_gpu=True) == {"pin_memory": True, "persistent_workers": True}
    assert loader_options(dc, 3, on_gpu=True, persistent_by_default=False)["persistent_workers"] is False
    assert loader_options(dc, 0, on_gpu=False) == {"pin_memory": False}
    dc.pin_memory, dc.persistent_workers, dc.prefetch_factor = True, False, 4
    assert loader_options(dc, 2, on_gpu=False) == {"pin_memory": False, "persistent_workers": False, "prefetch_factor": 4}
    assert loader_facts(dc, on_gpu=True)["cores"] == USABLE


def test_side_by_side_runs_get_disjoint_equal_shares_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    shares = share_cores(3)
    assert [len(s) for s in shares] == [5, 5, 5] and len(set().union(*map(set, shares))) == 15
    assert share_cores(8) == [[2 * i, 2 * i + 1] for i in range(8)]
    assert share_cores(32) == [[]] * 32  # fewer cores than runs: none pinned, the cores shared


def test_a_bad_loader_setting_is_named():
    from afdcd_bench.config import ConfigError, load_recipe

    assert load_recipe("cityscapes/deeplabv3_resnet18/baseline").data.num_workers == "auto"
    for bad, match in (("data.num_workers=many", "data.num_workers must be a number of workers or auto"),
                       ("data.num_workers=-1", "data.num_workers"), ("data.pin_memory=sometimes", "data.pin_memory must be")):
        with pytest.raises(ConfigError, match=match):
            load_recipe("demo/baseline", [bad])


def test_workers_kept_between_epochs_draw_each_epochs_augmentation():
    """Workers made once hold copies of the dataset made then: the epoch the loop sets afterwards must
    still reach them (it lives in shared memory), or every epoch repeats the first one's crops."""
    from afdcd_bench.data.base import SegmentationDataset

    class Frames(SegmentationDataset):
        def __len__(self):
            return 6

        def load(self, index):
            gen = np.random.default_rng(index)
            return gen.integers(0, 256, (24, 40, 3), dtype=np.uint8), gen.integers(0, 5, (24, 40), dtype=np.uint8), str(index)

    def epochs(workers, persistent):
        ds = Frames(train=True, crop_size=(16, 16), scale_range=(0.5, 2.0))
        loader = DataLoader(ds, batch_size=3, num_workers=workers, persistent_workers=persistent)
        out = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            out.append(torch.cat([b["image"] for b in loader]))
        return out

    plain, kept = epochs(0, False), epochs(2, True)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))
    assert not torch.equal(plain[0], plain[1])  # each epoch its own crops
