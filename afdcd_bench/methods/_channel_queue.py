"""CIRKDv2's memory of teacher channel vectors: one FIFO of unit vectors over pooled positions.

Run state like CIRKD's class queues (methods/_class_queues.py): held outside every module,
checkpointed with the run, identical on every process (the same gathered entries, the same seeded
generator).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class ChannelQueue:
    """`per_step` entries, drawn at random from a step's teacher channel vectors, replace the oldest.
    As released, a write that would reach the end goes to the last slots and the pointer restarts at 0."""

    def __init__(self, size: int, dim: int, per_step: int = 256, seed: int = 0, device: torch.device | str = "cpu"):
        if per_step > size:
            raise ValueError(f"per_step {per_step} exceeds the channel queue's {size} slots")
        self.per_step = per_step
        self.generator = torch.Generator().manual_seed(seed)
        self.entries = F.normalize(torch.randn(size, dim, generator=self.generator), dim=1).to(device)
        self.ptr = 0

    @property
    def nbytes(self) -> int:
        return self.entries.numel() * self.entries.element_size()

    @torch.no_grad()
    def enqueue(self, vectors: torch.Tensor) -> None:
        """vectors: (N, dim) teacher channel vectors of every process's images, in process order."""
        if vectors.shape[1] != self.entries.shape[1]:
            raise ValueError(f"channel vectors of width {vectors.shape[1]} for a queue of width {self.entries.shape[1]}: "
                             f"the teacher's head map is not the size the queue was built for")
        pick = torch.randperm(vectors.shape[0], generator=self.generator)[: self.per_step].to(vectors.device)
        new = F.normalize(vectors[pick].float(), dim=1).to(self.entries.device, self.entries.dtype)
        k, size = new.shape[0], self.entries.shape[0]
        if self.ptr + k >= size:
            self.entries[size - k:] = new
            self.ptr = 0
        else:
            self.entries[self.ptr:self.ptr + k] = new
            self.ptr += k

    def sample(self, n: int) -> torch.Tensor:
        """n random entries (all of them if the queue holds fewer), the step's contrasts."""
        idx = torch.randperm(self.entries.shape[0], generator=self.generator)[:n].to(self.entries.device)
        return self.entries[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"entries": self.entries.cpu(), "ptr": self.ptr, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["entries"].shape) != tuple(self.entries.shape):
            raise ValueError(f"checkpointed channel queue {tuple(state['entries'].shape)} does not match this run's "
                             f"{tuple(self.entries.shape)}")
        self.entries.copy_(state["entries"])
        self.ptr = int(state["ptr"])
        self.generator.set_state(state["generator"])
