"""Masked distillation with receptive tokens (MasKD, Huang et al. 2023): learnt tokens turn the
teacher's logits into soft spatial masks; the student mimics the logits under each mask."""
from __future__ import annotations

import torch

from .task import as_float, full_precision


def token_masks(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits and (T, K) tokens -> (B, T, H, W) masks sigmoid(<w_t, z(x)>)."""
    if logits.shape[1] != tokens.shape[1]:
        raise ValueError(f"tokens of {tokens.shape[1]} classes for logits of {logits.shape[1]}")
    with full_precision(logits):
        return torch.sigmoid(torch.einsum("bkhw,tk->bthw", as_float(logits), as_float(tokens)))


def masked_logits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sum_t m_t(x) z(x): what stage 1 classifies, so the masks must keep what the labels need."""
    return as_float(logits) * masks.sum(1, keepdim=True)


def token_dice(masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over images and ordered pairs of different tokens of the Dice overlap
    2<m_t, m_u> / ((|m_t|^2 + eps) + (|m_u|^2 + eps)): low when the tokens attend to different places."""
    t = masks.shape[1]
    if t < 2:
        return masks.sum() * 0.0
    with full_precision(masks):
        m = as_float(masks).flatten(2)
        sq = (m * m).sum(-1) + eps
        dice = 2 * (m @ m.transpose(1, 2)) / (sq[:, :, None] + sq[:, None, :])
        off = ~torch.eye(t, dtype=torch.bool, device=masks.device)
        return dice[:, off].mean()


def maskd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """0.5 * mean over images, tokens and classes of sum_x m(x)^2 (z_S - z_T)^2(x) / (sum_x m(x) + 1e-5)."""
    if student_logits.shape != teacher_logits.shape or masks.shape[-2:] != student_logits.shape[-2:]:
        raise ValueError(f"maskd_loss: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)} "
                         f"and masks {tuple(masks.shape)} differ")
    with full_precision(student_logits):
        diff = (as_float(student_logits) - as_float(teacher_logits.detach())).flatten(2) ** 2  # (B, K, N)
        m = as_float(masks.detach()).flatten(2)  # (B, T, N)
        per = torch.einsum("btn,bkn->btk", m * m, diff) / (m.sum(-1)[..., None] + 1e-5)
        return 0.5 * per.mean()
