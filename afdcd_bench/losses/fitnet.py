"""The canonical feature KD (FitNets' hint): the student's map, through its adapter, regressed onto
the teacher's (docs/distillers.md, "FitNet")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .task import as_float


def fitnet_loss(student_feat_aligned: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Mean over every element (N, C, H, W) of the squared difference, in float32; the teacher's map
    is a fixed target. The student's map must already be in the teacher's channels (its 1x1 adapter)."""
    if student_feat_aligned.shape != teacher_feat.shape:
        raise ValueError(f"fitnet_loss: the aligned student map {tuple(student_feat_aligned.shape)} and the teacher's "
                         f"{tuple(teacher_feat.shape)} differ")
    return F.mse_loss(as_float(student_feat_aligned), as_float(teacher_feat.detach()))
