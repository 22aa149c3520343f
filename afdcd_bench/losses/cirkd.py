"""Cross-image relational KD (CIRKD, Yang et al. 2022): pixel-to-pixel similarity distributions
within a group of images, and against class-wise memories of teacher pixels and regions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .task import as_float, full_precision


def _unit_pixels(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), each pixel's vector of unit length."""
    return F.normalize(as_float(feat).flatten(2), dim=1).transpose(1, 2)


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) of each row (last dim summed)."""
    log_t = F.log_softmax(teacher_logits, dim=-1)
    return (log_t.exp() * (log_t - F.log_softmax(student_logits, dim=-1))).sum(-1)


def cirkd_minibatch_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Mean over every ordered pair (i, j) of the batch's images, i = j included, of the mean over
    the pixels x of image i of KL(softmax(<t_x, t_y>/tau) || softmax(<s_x, s_y>/tau)) over the
    pixels y of image j; s, t are unit-length pixel vectors. No temperature-squared factor and no
    ignore mask, as released. Memory grows with B^2 (H*W)^2: the method calls it per small group."""
    if student_feat.shape[0] != teacher_feat.shape[0] or student_feat.shape[2:] != teacher_feat.shape[2:]:
        raise ValueError(f"cirkd_minibatch_loss: student {tuple(student_feat.shape)} and teacher "
                         f"{tuple(teacher_feat.shape)} maps differ")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    with full_precision(student_feat):
        s, t = _unit_pixels(student_feat), _unit_pixels(teacher_feat.detach())
        total = s.new_zeros(())
        for i in range(s.shape[0]):  # one image's rows at a time: (B, N, N) similarities, not (B, B, N, N)
            sim_s = torch.einsum("nc,bmc->bnm", s[i], s) / tau
            sim_t = torch.einsum("nc,bmc->bnm", t[i], t) / tau
            total = total + _kl_rows(sim_t, sim_s).mean(-1).sum()
        return total / s.shape[0] ** 2


def cirkd_memory_kl(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, contrasts: torch.Tensor, tau: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per anchor (rows of the (A, C) unit vectors): T^2 KL(softmax(<t, q>/(tau T)) || softmax(<s, q>/(tau T)))
    over the contrast entries q (rows of (M, C)). The caller averages over its anchors."""
    if student_vecs.shape != teacher_vecs.shape or student_vecs.shape[-1] != contrasts.shape[-1]:
        raise ValueError(f"cirkd_memory_kl: anchors {tuple(student_vecs.shape)} / {tuple(teacher_vecs.shape)} and "
                         f"contrasts {tuple(contrasts.shape)} differ in width")
    with full_precision(student_vecs):
        bank = as_float(contrasts.detach())
        scale = 1.0 / (tau * temperature)
        log_s = as_float(student_vecs) @ bank.T * scale
        log_t = as_float(teacher_vecs.detach()) @ bank.T * scale
        return temperature ** 2 * _kl_rows(log_t, log_s)


def patch_means(feat: torch.Tensor, pool: int) -> torch.Tensor:
    """The map averaged over pool x pool patches, in float32; the last patch of a row or column may be
    partial (CIRKDv2 pools this way before its channel terms and on large maps before the mini-batch term)."""
    return F.avg_pool2d(as_float(feat), pool, pool, ceil_mode=True) if pool > 1 else feat


def channel_vectors(feat: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h*w): each channel's map, averaged over pool x pool patches
    (patch_means), flattened and of unit length (CIRKDv2's channel terms)."""
    return F.normalize(as_float(patch_means(feat, pool)).flatten(2), dim=2)


def cirkd_channel_batch_loss(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """The mini-batch term over channels (CIRKDv2): the mean over every ordered pair (i, j) of the
    group's images of the mean over the channels c of image i of
    KL(softmax(<t_c, t_d>/tau) || softmax(<s_c, s_d>/tau)) over the channels d of image j. Inputs are
    unit-length channel vectors (B, C, N) of one width; no temperature-squared factor, as released."""
    if student_vecs.shape != teacher_vecs.shape:
        raise ValueError(f"cirkd_channel_batch_loss: student {tuple(student_vecs.shape)} and teacher "
                         f"{tuple(teacher_vecs.shape)} channel vectors differ")
    # the pixel term's computation with channels as the rows and positions as their components
    return cirkd_minibatch_loss(student_vecs.transpose(1, 2).unsqueeze(-1), teacher_vecs.transpose(1, 2).unsqueeze(-1), tau)
