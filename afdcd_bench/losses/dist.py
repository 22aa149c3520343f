"""DIST (Huang et al. 2022): correlation, not divergence, between class probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation along `dim`; eps is added to the product of norms, as released."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """beta x inter + gamma x intra on softmax(logits) over classes, every pixel a row.

    inter = 1 - mean over pixels of the correlation across classes; intra = 1 - mean over classes
    of the correlation across all pixels of the batch. No temperature, no ignore mask (released).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"dist_loss: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} logits differ")
    k = student_logits.shape[1]
    p_s = F.softmax(student_logits.float(), dim=1).movedim(1, -1).reshape(-1, k)
    p_t = F.softmax(teacher_logits.detach().float(), dim=1).movedim(1, -1).reshape(-1, k)
    inter = 1.0 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - _pearson(p_s, p_t, dim=0).mean()
    return beta * inter + gamma * intra
