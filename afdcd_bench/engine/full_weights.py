"""The student with all its weights in place, for evaluation and saving, whatever ZeRO stage trains it.

Its BatchNorm running statistics are rank 0's on every rank: without SyncBatchNorm (CPU runs,
DeepSpeed) each rank's drift apart, and the saved checkpoint is rank 0's, so the score recorded
must be rank 0's model too.

Why: under ZeRO-3 every forward gathers parameter shards from all ranks, so evaluating the
trained module on uneven validation shards deadlocks (one rank waits in a gather while the other
has finished), and a main-process-only `state_dict()` holds empty shards. A plain copy, refreshed
from the gathered parameters before each use, has neither problem. Other setups use the student
itself.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from accelerate import Accelerator

from .stepping import uses_deepspeed


def partitions_parameters(accelerator: Accelerator) -> bool:
    return uses_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


class FullWeights:
    """Create before `accelerator.prepare` (the copy must be taken while the weights are whole)."""

    def __init__(self, accelerator: Accelerator, student: nn.Module):
        self.copy = copy.deepcopy(student).to(accelerator.device) if partitions_parameters(accelerator) else None
        self.student = student

    def current(self) -> nn.Module:
        """Collective when there are several processes: every rank must call it."""
        model = self.student if self.copy is None else self._gathered()
        broadcast_buffers(model)
        return model

    def _gathered(self) -> nn.Module:
        import deepspeed

        params = list(self.student.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None), torch.no_grad():
            self.copy.load_state_dict(self.student.state_dict())  # copies into the copy's own tensors
        return self.copy


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Make every rank's buffers (BN running statistics) those of rank `src`."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=src)
