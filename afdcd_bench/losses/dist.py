"""DIST (Huang et al. 2022): correlation, not divergence, between class probabilities."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .task import as_float


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation along `dim`; eps is added to the product of norms, as released."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def _pearson_over_rows(a: torch.Tensor, b: torch.Tensor, sum_across: Callable[[torch.Tensor], torch.Tensor] | None,
                       eps: float = 1e-8) -> torch.Tensor:
    """Per-column correlation over the rows of every process (sum_across: a differentiable sum over
    processes). Means are taken without gradient: the correlation's gradient through them is zero."""
    total = sum_across or (lambda x: x)
    with torch.no_grad():
        first = total(torch.cat([a.sum(0), b.sum(0), a.new_tensor([a.shape[0]])]))
        k = a.shape[1]
        mean_a, mean_b = first[:k] / first[-1], first[k:2 * k] / first[-1]
    a, b = a - mean_a, b - mean_b
    second = total(torch.cat([(a * b).sum(0), (a * a).sum(0), (b * b).sum(0)]))
    cov, var_a, var_b = second.split(a.shape[1])
    return cov / (var_a.sqrt() * var_b.sqrt() + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """beta x inter + gamma x intra on softmax(logits) over classes, every pixel a row.

    inter = 1 - mean over pixels of the correlation across classes; intra = 1 - mean over classes
    of the correlation across all pixels of the batch. No temperature, no ignore mask (released).
    sum_across: a differentiable sum over processes, to correlate over every process's pixels
    (the released code correlates over each GPU's own).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"dist_loss: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} logits differ")
    k = student_logits.shape[1]
    p_s = F.softmax(as_float(student_logits), dim=1).movedim(1, -1).reshape(-1, k)
    p_t = F.softmax(as_float(teacher_logits.detach()), dim=1).movedim(1, -1).reshape(-1, k)
    inter = 1.0 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - _pearson_over_rows(p_s, p_t, sum_across).mean()
    return beta * inter + gamma * intra
