"""A batch as the networks take it, made where the batch already is (the GPU, in training).

Items leave the loader as uint8 pixels and labels (data/base.py): a quarter of the float image and
an eighth of the int64 label to collate, pin and copy, and no per-item normalisation on the
loader's cores. The normalisation here is the per-item one it replaces, operation for operation,
so a batch's numbers do not depend on where it is made: every division is a true division (a
division by a CPU scalar on a GPU is done as a multiplication by its reciprocal, one bit off).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from .transforms import DEFAULT_NORMALIZATION


@lru_cache(maxsize=16)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1).to(device)  # noqa: E731
    return torch.full((), 255.0, device=device), as_tensor(mean), as_tensor(std)


def normalize_images(images: torch.Tensor, normalization: dict[str, Any] | None) -> torch.Tensor:
    """uint8 N x 3 x H x W (in any memory layout, which the result keeps) -> float in the convention the
    model was trained with: {"mean", "std", "bgr", "scale"}, timm's RGB [0, 1] mean/std or the released
    checkpoints' BGR, 0-255, Caffe mean, std 1."""
    norm = normalization or DEFAULT_NORMALIZATION
    full, mean, std = _constants(tuple(map(float, norm["mean"])), tuple(map(float, norm["std"])), images.device)
    x = images.float() / full
    if norm.get("bgr"):
        x = x.flip(1)
    x = x * float(norm.get("scale", 1.0))
    return (x - mean) / std


def model_inputs(batch: dict[str, Any], normalization: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(float N x 3 x H x W in the model's convention, pad 0 there; int64 labels) of a collated batch.

    normalization: the model's {"mean", "std", "bgr", "scale"} (timm's RGB [0, 1] mean/std, or the
    released checkpoints' BGR, 0-255, Caffe mean, std 1), as its build_args hold it.
    """
    images = batch["image"]
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"a batch's images are uint8 N x 3 x H x W as the datasets give them, got {images.dtype} "
                        f"{tuple(images.shape)}")
    x = normalize_images(images, normalization)
    valid = batch.get("valid")
    if valid is not None:  # the release pads after normalising: a padded pixel is 0, the mean colour
        valid = valid.to(x.device)
        rows = torch.arange(x.shape[2], device=x.device)[None, :, None]
        cols = torch.arange(x.shape[3], device=x.device)[None, None, :]
        inside = ((rows >= valid[:, 0, None, None]) & (rows < valid[:, 1, None, None])
                  & (cols >= valid[:, 2, None, None]) & (cols < valid[:, 3, None, None]))
        x.masked_fill_(~inside[:, None], 0.0)
    return x, batch["label"].long()


def one_batch(item: dict[str, Any]) -> dict[str, Any]:
    """A single dataset item as a batch of one (for model_inputs)."""
    return torch.utils.data.default_collate([item])
