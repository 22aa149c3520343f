"""Image/label transforms shared by every benchmark: normalisation and the training augmentation.

Randomness comes from an explicit numpy Generator per sample, so a run is repeatable whatever
the number of loader workers (see SegmentationDataset.rng).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

IGNORE_INDEX = 255
DEFAULT_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "bgr": False, "scale": 1.0}


def normalize(image: np.ndarray, norm: dict[str, Any] | None = None) -> torch.Tensor:
    """uint8 RGB HxWx3 -> float 3xHxW in the convention the model was trained with.

    norm: {"mean", "std", "bgr", "scale"}: timm's RGB [0,1] mean/std, or the released
    checkpoints' BGR, 0-255, Caffe mean, std 1.
    """
    norm = norm or DEFAULT_NORMALIZATION
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0
    if norm.get("bgr"):
        x = x.flip(0)
    x = x * float(norm.get("scale", 1.0))
    mean = torch.tensor(norm["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(norm["std"], dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def draw_scale(rng: np.random.Generator, scale_range: tuple[float, float], step: float | None) -> float:
    """One of low, low + step, ..., high (the release: 0.5 + randint(0, 15) / 10), or uniform if step is None."""
    low, high = scale_range
    if step is None:
        return float(rng.uniform(low, high))
    count = int(round((high - low) / step)) + 1
    return float(low + int(rng.integers(0, count)) * step)


def _linear_taps(out_index: np.ndarray, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resampling taps of output positions along one axis, as torch's
    interpolate(mode="bilinear", align_corners=False) computes them (float32, half-pixel centres,
    clamped at the borders): lower index, upper index, weight of the upper one."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (out_index.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = low + (low < in_size - 1)
    return low, high, np.clip(src - low, 0, 1).astype(np.float32)


def _nearest_taps(out_index: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """torch's interpolate(mode="nearest") source index: floor(i * in/out) in float32, clamped."""
    if in_size == out_size:
        return out_index
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(out_index.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def train_augment(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    flip: bool = True,
    scale_step: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random scale, pad (label ignore), random crop, horizontal flip, as released.

    Returns the image, the label and the pad mask (True where padded): the release normalises
    before padding, so the pad is 0 in normalised space (the mean colour), which the caller sets
    after normalising (SegmentationDataset), whatever the normalisation. The image's own pad value
    here is only a placeholder. flip=False for data whose classes are not mirror-symmetric (digits).

    Only the crop's pixels are resampled: the result is that of resizing the whole image (bilinear,
    rounded to uint8; labels nearest) and cropping it, at a fraction of the cost (a 2x scale of a
    Cityscapes frame would otherwise resample 8M pixels for a 0.5M-pixel crop).
    """
    h, w = label.shape
    s = draw_scale(rng, scale_range, scale_step)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    ch, cw = crop_size
    y = int(rng.integers(0, max(nh, ch) - ch + 1))
    x = int(rng.integers(0, max(nw, cw) - cw + 1))
    vh, vw = min(ch, nh - y), min(cw, nw - x)  # the part of the crop inside the scaled image
    rows, cols = np.arange(y, y + vh), np.arange(x, x + vw)
    r0, r1, wr = _linear_taps(rows, h, nh)
    c0, c1, wc = _linear_taps(cols, w, nw)
    top, bottom = image[r0], image[r1]  # (vh, W, 3) uint8 copies: the source may be read-only
    tap = lambda rows, c: torch.from_numpy(rows[:, c]).float()  # noqa: E731
    wc_t, wr_t = torch.from_numpy(wc)[None, :, None], torch.from_numpy(wr)[:, None, None]
    upper = tap(top, c0) * (1 - wc_t) + tap(top, c1) * wc_t
    lower = tap(bottom, c0) * (1 - wc_t) + tap(bottom, c1) * wc_t
    inside = (upper * (1 - wr_t) + lower * wr_t).round_().clamp_(0, 255).to(torch.uint8).numpy()
    out_image = np.zeros((ch, cw, 3), dtype=np.uint8)
    out_label = np.full((ch, cw), IGNORE_INDEX, dtype=np.uint8)
    pad = np.ones((ch, cw), dtype=bool)
    out_image[:vh, :vw] = inside
    out_label[:vh, :vw] = label[np.ix_(_nearest_taps(rows, h, nh), _nearest_taps(cols, w, nw))]
    pad[:vh, :vw] = False
    if rng.random() < 0.5 and flip:
        out_image, out_label, pad = out_image[:, ::-1], out_label[:, ::-1], pad[:, ::-1]
    return np.ascontiguousarray(out_image), np.ascontiguousarray(out_label), np.ascontiguousarray(pad)
