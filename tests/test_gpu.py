"""The checks that need the GPU the suite will run on: run by `scripts/gpu_check.sh` (pytest -m gpu),
not by the default suite. The device comes from AFDCD_TEST_DEVICE (cuda by default); the suite
runs `scripts/gpu_check.sh --cpu`, which runs these on the CPU, so the first GPU run does not fail
on a typo (tests/test_gpu_check.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import TINY, reset_accelerate

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def device():
    name = os.environ.get("AFDCD_TEST_DEVICE", "cuda")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("no CUDA device: these tests need one (scripts/gpu_check.sh --cpu runs them on the CPU)")
    return torch.device(name)


def test_bf16_training_on_the_device(tmp_path, device):
    from afdcd_bench.config import load_recipe
    from afdcd_bench.engine import train

    cfg = load_recipe("demo/kd", [*TINY, "train.mixed_precision=bf16", f"output_dir={tmp_path}",
                                  f"teacher.checkpoint={_teacher(tmp_path)}"])
    rec = train(cfg, show_progress=False)
    reset_accelerate()
    assert rec["mixed_precision"] == "bf16" and rec["final_miou"] is not None
    assert ("cpu" in rec["device"]) == (device.type == "cpu")


def _teacher(tmp_path):
    from afdcd_bench.models import build_segmentor, save_segmentor

    path = tmp_path / "teacher.safetensors"
    save_segmentor(build_segmentor("deeplabv3", "resnet10t", 11, aux=True, head_width=128), path)
    return path


def test_sync_batchnorm_in_one_process_equals_batchnorm(tmp_path, device):
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{tmp_path / 'pg'}",
                            rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).to(device)
        if device.type == "cuda":
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(_copy(plain))
        else:  # torch's SyncBatchNorm has no CPU kernel: the suite's gloo stand-in
            from distributed_helpers import convert_gloo_sync_bn

            synced = convert_gloo_sync_bn(_copy(plain))
        x = torch.randn(4, 3, 16, 16, device=device, requires_grad=True)
        a, b = plain(x), synced(x)
        assert torch.allclose(a, b, atol=1e-5)
        ga = torch.autograd.grad(a.square().sum(), plain[0].weight)[0]
        gb = torch.autograd.grad(b.square().sum(), synced[0].weight)[0]
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-5)
    finally:
        dist.destroy_process_group()


def _copy(module):
    import copy

    return copy.deepcopy(module)


def test_compiled_contrastive_backend_equals_eager_on_the_device(device):
    from afdcd_bench.losses import contrastive_loss

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 64, 16, 32, generator=gen).to(device).requires_grad_(True)
    t = torch.randn(2, 64, 16, 32, generator=gen).to(device)
    eager = contrastive_loss(s, t, backend="eager")
    (g_eager,) = torch.autograd.grad(eager, s)
    compiled = contrastive_loss(s, t, backend="compiled")
    (g_compiled,) = torch.autograd.grad(compiled, s)
    assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g_eager, g_compiled, rtol=1e-4, atol=1e-6)


def test_deepspeed_zero2_on_one_device(tmp_path, device):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU")}
    precision = "bf16" if device.type == "cuda" else "no"  # DeepSpeed's bf16 with BatchNorm fails on CPU (docs/distributed.md)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/zero2.yaml"),
           "--num_processes", "1", "--mixed_precision", precision, "-m", "afdcd_bench", "train", "demo/baseline", *TINY,
           f"output_dir={tmp_path / 'runs'}", "--results-dir", str(tmp_path / "res")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((tmp_path / "res/demo__baseline__seed0.json").read_text())
    assert (rec["distributed_type"], rec["num_processes"]) == ("DEEPSPEED", 1)
    assert ("cpu" in rec["device"]) == (device.type == "cpu")
