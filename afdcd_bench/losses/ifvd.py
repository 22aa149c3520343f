"""Intra-class feature variation distillation (IFVD, Wang et al. 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .task import IGNORE_INDEX, as_float


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels nearest-resized to a feature map's size."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _prototype_similarity(feat: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """cos(f(x), mean of f over x's class in x's image), per pixel; 0 where no class is given."""
    onehot = onehot.to(feat.dtype)
    counts = onehot.sum(dim=(2, 3))  # (B, K)
    protos = torch.einsum("bkhw,bchw->bkc", onehot, feat) / (counts[..., None] + 1e-6)
    at_pixel = torch.einsum("bkhw,bkc->bchw", onehot, protos)
    return F.cosine_similarity(feat, at_pixel, dim=1)


def ifvd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor, num_classes: int,
              ignore_index: int = IGNORE_INDEX, count_ignored: bool = False) -> torch.Tensor:
    """Mean squared difference of the student's and teacher's intra-class variation maps.

    count_ignored=False (default): the mean is over labelled pixels. True: over every pixel, ignored
    ones adding a zero error, as the released code does (it scales the loss by the labelled fraction).
    """
    if student_feat.shape[0] != teacher_feat.shape[0] or student_feat.shape[2:] != teacher_feat.shape[2:]:
        raise ValueError(f"ifvd_loss: student {tuple(student_feat.shape)} and teacher {tuple(teacher_feat.shape)} maps differ")
    b, _, h, w = student_feat.shape
    lab = labels_at(labels, (h, w))
    valid = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    onehot = F.one_hot(torch.where(valid, lab, 0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot * valid[:, None]
    v_s = _prototype_similarity(as_float(student_feat), onehot)
    v_t = _prototype_similarity(as_float(teacher_feat.detach()), onehot)
    err = ((v_s - v_t) ** 2) * valid
    denom = b * h * w if count_ignored else valid.sum().clamp_min(1)
    return err.sum() / denom
