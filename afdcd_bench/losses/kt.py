"""Knowledge Tailoring (KT, Pattern Recognition 2025): logit tailoring with ground-truth masks and
feature tailoring with a triplet term, as released (docs/distillers.md, "KT").

Every divergence is the released CriterionKT/CriterionKD: channel-wise distillation at temperature 4
(softmax over the positions of each channel, T^2 x the KL summed and divided by batch x channels),
which is `cwd_loss`. The release takes `.log()` of a softmax where this takes log_softmax: the same
numbers wherever the softmax does not underflow.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cwd import cwd_loss
from .task import IGNORE_INDEX, as_float


class Tailoring(nn.Module):
    """The released tailoring module: 1x1 conv C -> l, ReLU, 1x1 l -> l, ReLU, 1x1 l -> C, with biases."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(channels, latent, 1), nn.ReLU(), nn.Conv2d(latent, latent, 1), nn.ReLU(),
                                    nn.Conv2d(latent, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def class_masks(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, K, H, W) one-hot of the labels as floats; ignored pixels and labels outside the classes
    belong to no class (all zeros), as the release's ignore label does."""
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    onehot = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)).long(), num_classes).permute(0, 3, 1, 2)
    return onehot * valid.unsqueeze(1)


def tailor_logits(z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, N): P = max(z, mu+) on each class's pixels, 0 elsewhere; N = min(z, mu-) off them, 0 on them.
    mu+ is the mean of the positive entries of z x mask of each image and class (no positive entry: no
    clamp, where the release's mean is NaN); mu- the mean of z x (1 - mask) over all pixels, the
    class's zeros included. The means carry gradient, as the release's in-place assignments do. One
    vectorised pass instead of the release's loop over images and classes (same numbers)."""
    on = z * mask
    off = z * (1 - mask)
    positive = (on > 0).to(z.dtype)
    count = positive.sum(dim=(2, 3), keepdim=True)
    mu_pos = (on * positive).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1)
    p = torch.where((count > 0) & (on < mu_pos), mu_pos.expand_as(on), on) * mask
    mu_neg = off.mean(dim=(2, 3), keepdim=True)
    n = torch.where(off > mu_neg, mu_neg.expand_as(off), off) * (1 - mask)
    return p, n


def kt_logit_tailoring_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                            num_classes: int, temperature: float = 4.0, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """LT = CWD(Z_S, P_T + N_T) + CWD(P_S, P_T) + CWD(N_S, N_T) on the logits brought to the labels'
    size by nearest interpolation (the release's crop-size maps)."""
    size = tuple(labels.shape[-2:])
    zs = F.interpolate(as_float(student_logits), size=size, mode="nearest")
    zt = F.interpolate(as_float(teacher_logits.detach()), size=size, mode="nearest")
    mask = class_masks(labels, num_classes, ignore_index).to(zs.dtype)
    pt, nt = tailor_logits(zt, mask)
    ps, ns = tailor_logits(zs, mask)
    return (cwd_loss(zs, pt + nt, temperature) + cwd_loss(ps, pt, temperature) + cwd_loss(ns, nt, temperature))


def correlation_mix(anchor: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, L) in the anchor's channels: A = anchor's channels x other's channels cosine correlations over
    the positions (each channel row L2-normalised), H = A . other, L = (1 - A) . other, per image."""
    b, ca, h, w = anchor.shape
    co = other.shape[1]
    a_hat = F.normalize(anchor.reshape(b, ca, h * w), dim=2)
    o_flat = other.reshape(b, co, h * w)
    corr = a_hat @ F.normalize(o_flat, dim=2).transpose(1, 2)  # (B, Ca, Co)
    return (corr @ o_flat).view(b, ca, h, w), ((1 - corr) @ o_flat).view(b, ca, h, w)


def width_triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0,
                  eps: float = 1e-7) -> torch.Tensor:
    """torch's TripletMarginLoss(margin 1, p 2, eps 1e-7) on (B, C, H, W) maps, as the release calls it:
    the distances are taken along the last axis (the width) only, and averaged over (B, C, H) rows."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2, eps=eps)


def kt_feature_terms(student_feat: torch.Tensor, teacher_feat: torch.Tensor, student_tailored: bool,
                     tailor_student: Callable[[torch.Tensor], torch.Tensor],
                     tailor_teacher: Callable[[torch.Tensor], torch.Tensor],
                     anchor_conv: Callable[[torch.Tensor], torch.Tensor], temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(FT, triplet) on the head features f_S, f_T.

    student_tailored (the release's iterations before its switch): the student's map mixed into the
    teacher's channels, H, L = correlation_mix(f_T, f_S); FT = CWD(g_s(H), f_T); triplet(W_a f_S,
    g_s(H), g_s(L)). After: the teacher's map mixed into the student's channels, H', L' =
    correlation_mix(f_S, f_T); FT = CWD(f_S, g_t(H')) (its target detached); triplet(f_S, g_t(H'),
    g_t(L')), not detached (the gradient reaches f_S through the correlations)."""
    fs, ft = as_float(student_feat), as_float(teacher_feat.detach())
    if student_tailored:
        high, low = correlation_mix(ft, fs)
        pos, neg = tailor_student(high), tailor_student(low)
        return cwd_loss(pos, ft, temperature), width_triplet(anchor_conv(fs), pos, neg)
    high, low = correlation_mix(fs, ft)
    pos, neg = tailor_teacher(high), tailor_teacher(low)
    return cwd_loss(fs, pos, temperature), width_triplet(fs, pos, neg)
