"""Structured KD (SKD, Liu et al. 2019): the pair-wise term and the holistic (adversarial) parts.

The discriminator follows the released SAGAN-style network (docs/losses.md): input BatchNorm,
four spectral-norm 4x4 stride-2 convolutions with self-attention after the third and fourth, and
a plain 4x4 convolution to one score map; trained with the hinge loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .task import as_float


def pairwise_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, pool: int = 2) -> torch.Tensor:
    """Mean over images and node pairs of the squared difference of cosine-similarity matrices;
    nodes = max-pooled positions (kernel and stride `pool`, ceil mode). Channels may differ."""
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")

    def affinity(f: torch.Tensor) -> torch.Tensor:
        f = F.max_pool2d(as_float(f), kernel_size=pool, stride=pool, ceil_mode=True)
        f = F.normalize(f.flatten(2), dim=1)
        return f.transpose(1, 2) @ f  # (B, N, N)

    a_s, a_t = affinity(student_feat), affinity(teacher_feat.detach())
    if a_s.shape != a_t.shape:
        raise ValueError(f"pairwise_loss: student and teacher maps give {tuple(a_s.shape)} vs {tuple(a_t.shape)} nodes")
    return (a_s - a_t).pow(2).mean()


class SelfAttention(nn.Module):
    """SAGAN self-attention: out = gamma * attention(value) + x, gamma starting at 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)
        k = self.key(x).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N)
        out = self.value(x).flatten(2) @ attn.transpose(1, 2)
        return self.gamma * out.view(b, c, h, w) + x


class ReleasedSpectralNormConv(nn.Conv2d):
    """A convolution whose weight is divided by its largest singular value, estimated as the SKD
    release does (its SAGAN-style layer): u and v drawn from N(0, 1) with no warm-up, and one power
    iteration at every forward, train or eval, computing v from u first, then u from v. torch's
    parametrization (`spectral_norm: torch`) runs u first, 15 iterations when built and none in eval
    mode; its first-step scores differ from the release's by 1-17% (docs/distillers.md, "SKD")."""

    def __init__(self, *args, eps: float = 1e-12, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps
        # drawn in the order torch's parametrization draws them (u, then v), so the modules built
        # after this one start from the same random state either way
        u = self.weight.new_empty(self.weight.shape[0]).normal_(0, 1)
        v = self.weight.new_empty(self.weight[0].numel()).normal_(0, 1)
        self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mat = self.weight.flatten(1)
        with torch.no_grad():
            v = F.normalize(mat.t() @ self._u, dim=0, eps=self.eps)
            u = F.normalize(mat @ v, dim=0, eps=self.eps)
            self._u.copy_(u)
            self._v.copy_(v)
        # u and v, not the buffers: a second forward before the backward (the discriminator scores
        # the teacher's and the student's logits) updates the buffers in place
        sigma = torch.dot(u, mat @ v)
        return self._conv_forward(x, self.weight / sigma, self.bias)


SPECTRAL_NORMS = ("release", "torch")


def _sn_conv(cin: int, cout: int, spectral: str) -> nn.Sequential:
    if spectral == "release":
        return nn.Sequential(ReleasedSpectralNormConv(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.1))
    return nn.Sequential(spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.1))


class Discriminator(nn.Module):
    """Scores a logit map; needs maps of at least MIN_SIZE x MIN_SIZE (crop 512 at stride 8)."""

    MIN_SIZE = 64

    def __init__(self, num_classes: int, spectral_norm: str = "release"):
        super().__init__()
        if spectral_norm not in SPECTRAL_NORMS:
            raise ValueError(f"spectral_norm must be one of {SPECTRAL_NORMS}, got {spectral_norm!r}")
        self.norm = nn.BatchNorm2d(num_classes)
        self.block1 = _sn_conv(num_classes, 64, spectral_norm)
        self.block2 = _sn_conv(64, 128, spectral_norm)
        self.block3 = _sn_conv(128, 256, spectral_norm)
        self.attn1 = SelfAttention(256)
        self.block4 = _sn_conv(256, 512, spectral_norm)
        self.attn2 = SelfAttention(512)
        self.last = nn.Conv2d(512, 1, 4)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.norm(logits.to(self.norm.weight.dtype)))))
        x = self.attn2(self.block4(self.attn1(x)))
        return self.last(x)


def generator_hinge(scores_student: torch.Tensor) -> torch.Tensor:
    return -scores_student.mean()


def discriminator_hinge(scores_teacher: torch.Tensor, scores_student: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - scores_teacher).mean() + F.relu(1.0 + scores_student).mean()
