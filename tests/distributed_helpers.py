"""Test-only stand-ins for what torch offers on GPUs only.

torch's SyncBatchNorm has no CPU kernel, so multi-process equivalence on CPU uses this small
gloo-capable one: per-channel sum, sum of squares and count are all-reduced (differentiably, so
the backward pass is synchronised too), then normalised as BatchNorm2d does.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn


class GlooSyncBatchNorm(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return super().forward(x)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        stats = dist_fn.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_gloo_sync_bn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            sync = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_gloo_sync_bn(child)
    return module


def strip(module: nn.Module, kinds: tuple[type, ...]) -> nn.Module:
    """Replace every submodule of these kinds by Identity (dropout draws differ per process)."""
    for name, child in module.named_children():
        if isinstance(child, kinds):
            setattr(module, name, nn.Identity())
        else:
            strip(child, kinds)
    return module


def _worker(recipe: str, overrides: list[str], results_dir: str | None, sync_bn: bool, env: dict[str, str],
            stop_after_saves: int = 0, per_device_batch: int | None = None, strip_kinds: tuple = (), many: str = "",
            signal_rank1_at: int = -1) -> None:
    import json
    import os

    from accelerate.state import AcceleratorState

    from afdcd_bench.config import load_recipe
    from afdcd_bench.engine import TrainHooks, train
    from afdcd_bench.engine.stopping import TrainingPreempted
    from accelerate import PartialState

    saves = []

    def die_after_saves(step: int) -> None:  # a killed run: every rank dies right after its N-th checkpoint
        saves.append(step)
        if len(saves) == stop_after_saves:
            os._exit(3)

    def signal_rank1(micro: int) -> None:  # a scheduler's stop signal that reached one process only
        if micro == signal_rank1_at and PartialState().process_index == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    hooks = TrainHooks(adapt_student=(lambda m: strip(m, strip_kinds)) if strip_kinds else None,
                       after_checkpoint=die_after_saves if stop_after_saves else None,
                       before_update=signal_rank1 if signal_rank1_at >= 0 else None)
    os.environ.update(env)
    if "ACCELERATE_USE_DEEPSPEED" in env:
        os.environ.pop("ACCELERATE_USE_CPU", None)  # set by debug_launcher; it would turn DeepSpeed off
        os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))  # DeepSpeed asserts on it
    runs = json.loads(many) if many else [[recipe, overrides]]
    for name, extra in runs:  # several runs, one after another, in the same two processes
        try:
            train(load_recipe(name, extra), results_dir=results_dir, show_progress=False,
                  convert_sync_bn=convert_gloo_sync_bn if sync_bn else None, per_device_batch=per_device_batch, hooks=hooks)
        except TrainingPreempted as exc:
            print(f"rank {PartialState().process_index}: {exc}", flush=True)
        AcceleratorState._reset_state(reset_partial_state=True)


def _buffers_worker() -> None:
    """Rank r starts with BN statistics r; after broadcast_buffers every rank holds rank 0's."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    from afdcd_bench.engine.full_weights import broadcast_buffers

    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(float(acc.process_index + 1))
    bn.num_batches_tracked.fill_(acc.process_index + 5)
    broadcast_buffers(bn)
    assert torch.equal(bn.running_mean, torch.ones(3)) and int(bn.num_batches_tracked) == 5, acc.process_index


def _sync_bn_worker() -> None:
    """Each rank normalises a different half of one batch with the stand-in; outputs, input and
    affine gradients and running statistics must equal plain BatchNorm over the whole batch."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    rank, world = acc.process_index, acc.num_processes
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=g) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + torch.tensor([0.0, 2.0, -1.0]).view(1, 3, 1, 1)
    w = torch.randn(4, 3, 5, 6, generator=g)  # a loss that weighs every output differently
    plain = nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        plain.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    synced = GlooSyncBatchNorm(3)
    synced.load_state_dict(plain.state_dict())
    full = x.clone().requires_grad_(True)
    (plain(full) * w).sum().backward()
    part = slice(rank * 4 // world, (rank + 1) * 4 // world)
    mine = x[part].clone().requires_grad_(True)
    y = synced(mine)
    (y * w[part]).sum().backward()
    others = acc.gather(mine.detach())
    assert not torch.equal(others[:2], others[2:]), "the two processes must see different inputs"
    assert torch.allclose(y, _plain_out(plain, x)[part], atol=1e-5), rank
    assert torch.allclose(mine.grad, full.grad[part], atol=1e-5), rank
    weight_grad = torch.stack([synced.weight.grad, synced.bias.grad])
    assert torch.allclose(acc.reduce(weight_grad, reduction="sum"), torch.stack([plain.weight.grad, plain.bias.grad]), atol=1e-4), rank
    assert torch.allclose(synced.running_mean, plain.running_mean, atol=1e-6), rank
    assert torch.allclose(synced.running_var, plain.running_var, atol=1e-5), rank


def _plain_out(plain: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the whole batch with the batch's own statistics, without touching the running ones."""
    with torch.no_grad():
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + plain.eps) * plain.weight.view(1, -1, 1, 1) + plain.bias.view(1, -1, 1, 1)


def main() -> None:
    """Two forked gloo processes training one recipe, from a fresh interpreter.

    Forking a process whose OpenMP threads already ran (any earlier test's training) can
    deadlock the children, so the tests start this script instead of forking pytest itself.
    """
    import argparse
    import functools

    from accelerate import debug_launcher

    p = argparse.ArgumentParser()
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--strip", default="dropout", choices=("dropout", "dropout+bn"))
    p.add_argument("--zero", type=int, default=0, help="DeepSpeed ZeRO stage (0: plain DDP)")
    p.add_argument("--per-device-batch", type=int, default=None)
    p.add_argument("--stop-after-saves", type=int, default=0, help="exit every rank after its N-th checkpoint")
    p.add_argument("--check-buffers", action="store_true", help="only check broadcast_buffers on 2 processes")
    p.add_argument("--check-sync-bn", action="store_true", help="only check the SyncBN stand-in on 2 processes")
    p.add_argument("--signal-rank1-at", type=int, default=-1, help="send SIGUSR1 to rank 1 alone before this micro-batch")
    p.add_argument("--many", default="", help="JSON list of [recipe, overrides] trained one after another")
    a = p.parse_args()
    if a.check_buffers or a.check_sync_bn:
        debug_launcher(_buffers_worker if a.check_buffers else _sync_bn_worker, num_processes=2)
        return
    kinds = (nn.Dropout, nn.Dropout2d) + ((nn.BatchNorm2d,) if a.strip == "dropout+bn" else ())
    # No ACCELERATE_GRADIENT_CLIPPING: the trainer itself must turn DeepSpeed's default global clip off.
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(a.zero)} if a.zero else {}
    debug_launcher(functools.partial(_worker, a.recipe, a.overrides, a.results_dir, a.sync_bn, env, a.stop_after_saves,
                                     a.per_device_batch, kinds, a.many, a.signal_rank1_at), num_processes=2)


if __name__ == "__main__":
    main()
