"""The Af-DCD feature loss: masked feature mimicking plus dense contrast.

One module because the align conv and the projector are trained with the student
and their parameters must be handed to the optimiser (and clipped) together.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contrastive import check_contrastive_args, contrastive_loss

MASKS = ("random", "center")
PROJECTORS = ("basic", "enhanced")


class AfDCDTerms(NamedTuple):
    """Unweighted terms: the recipe's lambda_fd / lambda_ctr weight them."""

    fd: torch.Tensor
    ctr: torch.Tensor


def _conv3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1)


class EnhancedProjector(nn.Module):
    """Two conv3x3+ReLU blocks in series, each read out by its own conv3x3; outputs averaged."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = nn.Sequential(_conv3x3(channels), nn.ReLU(inplace=True))
        self.block_2 = nn.Sequential(_conv3x3(channels), nn.ReLU(inplace=True))
        self.adaptor_1 = _conv3x3(channels)
        self.adaptor_2 = _conv3x3(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.block_1(x)
        h2 = self.block_2(h1)
        return (self.adaptor_1(h1) + self.adaptor_2(h2)) / 2.0


def build_projector(kind: str, channels: int) -> nn.Module:
    if kind == "basic":
        return nn.Sequential(_conv3x3(channels), nn.ReLU(inplace=True), _conv3x3(channels))
    if kind == "enhanced":
        return EnhancedProjector(channels)
    raise ValueError(f"unknown projector {kind!r}; expected one of {PROJECTORS}")


def center_mask(batch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Keep-mask (B, 1, H, W) with the block [H/3:2H/3, W/3:2W/3] zeroed."""
    mask = torch.ones(batch, 1, height, width, device=device)
    mask[:, :, height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 0
    return mask


def random_mask(batch: int, height: int, width: int, ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """Keep-mask (B, 1, H, W): each position zeroed independently with probability `ratio`."""
    return (torch.rand(batch, 1, height, width, device=device) >= ratio).float()


def crop_to_patch_multiple(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Top-left crop to the largest multiple of the patch sides (CamVid: 45x45 -> 44x44)."""
    h, w = x.shape[-2:]
    hh, ww = h - h % patch[0], w - w % patch[1]
    if hh == 0 or ww == 0:
        raise ValueError(f"feature map {h}x{w} is smaller than one {patch[0]}x{patch[1]} patch")
    return x[..., :hh, :ww]


class AfDCDLoss(nn.Module):
    """Masked mimicking (L_fd) and dense contrast (L_ctr) between student and teacher maps.

    forward(student_feat, teacher_feat, mask=None) -> AfDCDTerms(fd, ctr), unweighted.
    `mask` is a keep-mask (B, 1, H, W) of ones and zeros multiplying the aligned student map;
    given, it makes the loss deterministic. The teacher map is treated as a fixed target.
    After pooling (pool=0: none), maps whose sides are not multiples of the patch are cropped
    top-left to the largest multiple, which reproduces the released CamVid 44x44 crop.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        mode: str = "omni",
        groups: int = 16,
        patch: tuple[int, int] = (4, 4),
        pool: int = 4,
        tau: float = 0.07,
        distance: str = "l1",
        mask: str = "random",
        mask_ratio: float = 0.75,
        projector: str = "basic",
        backend: str = "eager",
    ):
        super().__init__()
        patch = (int(patch[0]), int(patch[1]))
        check_contrastive_args(mode, distance, groups, patch, tau, backend)
        if mask not in MASKS:
            raise ValueError(f"unknown mask {mask!r}; expected one of {MASKS}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if pool < 0:
            raise ValueError(f"pool must be >= 0 (0 = no pooling), got {pool}")
        if mode in ("omni", "channel") and teacher_channels % groups:
            raise ValueError(f"teacher_channels={teacher_channels} is not a multiple of groups={groups}")
        self.mode, self.groups, self.patch, self.pool = mode, groups, patch, pool
        self.tau, self.distance, self.mask, self.mask_ratio = tau, distance, mask, mask_ratio
        self.backend = backend
        self.align = (
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
            if student_channels != teacher_channels
            else nn.Identity()
        )
        self.projector = build_projector(projector, teacher_channels)

    def make_mask(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        if self.mask == "center":
            return center_mask(b, h, w, feat.device)
        return random_mask(b, h, w, self.mask_ratio, feat.device)

    def mimic(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_fd, the projected masked student map): the masked-mimicking term alone."""
        teacher_feat = teacher_feat.detach()
        aligned = self.align(student_feat)
        if aligned.shape != teacher_feat.shape:
            raise ValueError(
                f"aligned student map {tuple(aligned.shape)} does not match teacher map {tuple(teacher_feat.shape)}"
            )
        if mask is None:
            mask = self.make_mask(aligned)
        elif mask.shape != (aligned.shape[0], 1, *aligned.shape[2:]):
            raise ValueError(f"mask must be (B, 1, H, W) = {(aligned.shape[0], 1, *aligned.shape[2:])}, got {tuple(mask.shape)}")
        projected = self.projector(aligned * mask.to(aligned.dtype))
        fd = (projected - teacher_feat).pow(2).sum() / teacher_feat.shape[0]
        return fd, projected

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, mask: torch.Tensor | None = None) -> AfDCDTerms:
        teacher_feat = teacher_feat.detach()
        fd, projected = self.mimic(student_feat, teacher_feat, mask)
        p, t = projected, teacher_feat
        if self.pool:
            p, t = F.max_pool2d(p, self.pool), F.max_pool2d(t, self.pool)
        if self.mode != "channel":
            p, t = crop_to_patch_multiple(p, self.patch), crop_to_patch_multiple(t, self.patch)
        ctr = contrastive_loss(p, t, self.mode, self.groups, self.patch, self.tau, self.distance, self.backend)
        return AfDCDTerms(fd, ctr)
