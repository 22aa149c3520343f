"""Task loss: cross-entropy on logits upsampled to the label, plus the weighted aux CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def as_float(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision inputs (losses run in fp32 under autocast); float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def full_precision(x: torch.Tensor) -> torch.autocast:
    """A region where matmuls stay fp32 under autocast (similarities at a small tau are sensitive)."""
    return torch.autocast(x.device.type, enabled=False)


def upsample_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with align_corners=True, as the released training and evaluation code."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map at another size: averaged over the area each output pixel covers where it is larger
    (what the coarser pixel sees), bilinear (align_corners=False) where it is smaller."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def segmentation_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean CE over labelled pixels; exactly 0 (with a graph) when every pixel is ignored."""
    logits = upsample_to(logits, tuple(labels.shape[-2:]))
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def task_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    aux_logits: torch.Tensor | None = None,
    aux_weight: float = 0.4,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    loss = segmentation_ce(logits, labels, ignore_index)
    if aux_logits is not None:
        loss = loss + aux_weight * segmentation_ce(aux_logits, labels, ignore_index)
    return loss
