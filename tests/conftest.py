import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The digits benchmark is generated once per session into a shared temporary cache.
    cache = tmp_path_factory.getbasetemp() / "afdcd-cache"
    monkeypatch.setenv("AFDCD_CACHE", str(cache))
