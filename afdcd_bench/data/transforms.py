"""Image/label transforms shared by every benchmark: the training augmentation (normalisation is
data/batches.py's, on the device).

Randomness comes from an explicit numpy Generator per sample, so a run is repeatable whatever
the number of loader workers (see SegmentationDataset.rng).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

IGNORE_INDEX = 255
DEFAULT_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "bgr": False, "scale": 1.0}


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


Box = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 of a crop that hold image (the rest is pad)


def augment(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    flip: bool = True,
    scale_step: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Box]:
    """Random scale, pad (label ignore), random crop, horizontal flip, as released: the crop as a
    uint8 3xHxW tensor, its uint8 label (pad: IGNORE_INDEX) and the box that holds image. The image's
    pad is 0 here; the release normalises before padding, so a padded pixel is the mean colour,
    which batches.model_inputs sets after normalising. flip=False for data whose classes are not
    mirror-symmetric (digits).

    Only the crop's pixels are resampled: the result is that of resizing the whole image (bilinear,
    rounded to uint8; labels nearest) and cropping it, at a fraction of the cost (a 2x scale of a
    Cityscapes frame would otherwise resample 8M pixels for a 0.5M-pixel crop). Each source row is
    resampled along x once, however many output rows it feeds (an upscale shares most of them),
    with the same float32 operations in the same order, so the pixels do not depend on that.
    """
    h, w = label.shape
    s = draw_scale(rng, scale_range, scale_step)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    ch, cw = crop_size
    y = int(rng.integers(0, max(nh, ch) - ch + 1))
    x = int(rng.integers(0, max(nw, cw) - cw + 1))
    flipped = rng.random() < 0.5 and flip
    vh, vw = min(ch, nh - y), min(cw, nw - x)  # the part of the crop inside the scaled image
    rows, cols = np.arange(y, y + vh), np.arange(x, x + vw)
    if flipped:  # the columns taken right to left: the flip costs no pass of its own
        cols = cols[::-1].copy()
    box = (0, vh, cw - vw, cw) if flipped else (0, vh, 0, vw)
    out_image = torch.zeros((3, ch, cw), dtype=torch.uint8)
    out_label = torch.full((ch, cw), IGNORE_INDEX, dtype=torch.uint8)
    out_image[:, :vh, box[2]:box[3]] = _bilinear(image, _linear_taps(rows, h, nh), _linear_taps(cols, w, nw)).permute(2, 0, 1)
    near = np.take(np.take(label, _nearest_taps(rows, h, nh), axis=0), _nearest_taps(cols, w, nw), axis=1)
    out_label[:vh, box[2]:box[3]] = torch.from_numpy(near)
    return out_image, out_label, box


def _rows(array: np.ndarray, index: torch.Tensor) -> torch.Tensor:
    """array[index] as a tensor of its own (the source may be a read-only memory map)."""
    return torch.from_numpy(np.take(array, index.numpy(), axis=0))


def _bilinear(image: np.ndarray, row_taps: tuple, col_taps: tuple) -> torch.Tensor:
    """The crop's pixels, rows x cols x 3 uint8: along x then along y, each as a*(1-w) + b*w in
    float32, rounded (the values lie in [0, 255], so no clamp is needed; numpy's conversion of the
    whole numbers to uint8 is the faster one)."""
    r0, r1, wr = row_taps
    c0, c1, wc = col_taps
    wc_t = torch.from_numpy(wc)[:, None].expand(-1, 3)  # made contiguous: the product runs along memory
    left, right = (1 - wc_t).contiguous(), wc_t.contiguous()
    c0_t, c1_t = torch.from_numpy(c0), torch.from_numpy(c1)

    def along_x(source_rows: np.ndarray) -> torch.Tensor:
        slab = _rows(image, torch.from_numpy(source_rows))  # rows x W x 3
        out = slab.index_select(1, c0_t).float().mul_(left)
        return out.add_(slab.index_select(1, c1_t).float().mul_(right))

    sources, where = np.unique(np.concatenate([r0, r1]), return_inverse=True)
    if len(sources) < len(r0) + len(r1):  # output rows share source rows (all but a halving): each resampled once
        shared, where = along_x(sources), torch.from_numpy(where.reshape(-1))
        upper, lower = shared.index_select(0, where[: len(r0)]), shared.index_select(0, where[len(r0):])
    else:
        upper, lower = along_x(r0), along_x(r1)
    wr_t = torch.from_numpy(wr)[:, None, None]
    out = upper.mul_(1 - wr_t).add_(lower.mul_(wr_t))
    return torch.from_numpy(out.round_().numpy().astype(np.uint8))


def train_augment(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    flip: bool = True,
    scale_step: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`augment` as HxWx3 / HxW arrays and a pad mask (True where padded), for inspection and tests."""
    img, lab, (y0, y1, x0, x1) = augment(image, label, crop_size, scale_range, rng, flip, scale_step)
    pad = np.ones(tuple(crop_size), dtype=bool)
    pad[y0:y1, x0:x1] = False
    return img.permute(1, 2, 0).contiguous().numpy(), lab.numpy(), pad
