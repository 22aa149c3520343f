"""Test-only stand-ins for what torch offers on GPUs only.

torch's SyncBatchNorm has no CPU kernel, so multi-process equivalence on CPU uses this small
gloo-capable one: per-channel sum, sum of squares and count are all-reduced (differentiably, so
the backward pass is synchronised too), then normalised as BatchNorm2d does.
"""
from __future__ import annotations

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
