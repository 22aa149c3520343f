"""Channel-wise distillation (CWD, Shu et al. 2021): each channel's spatial distribution."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .task import as_float


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 x mean over batch and channels of KL(softmax_x(t/T) || softmax_x(s/T)), softmax over positions.

    The paper's normalisation (a per-channel mean). The released code divides a sum over the
    teacher's channels by the student's channel count; docs/losses.md says how recipes match it.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"cwd_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ "
                         "(align the student's channels first)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_s = F.log_softmax(as_float(student).flatten(2) / t, dim=-1)
    log_t = F.log_softmax(as_float(teacher.detach()).flatten(2) / t, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)  # (B, C)
    return kl.mean() * t * t
