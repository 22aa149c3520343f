"""Image/label transforms shared by every benchmark: normalisation and the training augmentation.

Randomness comes from an explicit numpy Generator per sample, so a run is repeatable whatever
the number of loader workers (see SegmentationDataset.rng).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    """
    h, w = label.shape
    s = draw_scale(rng, scale_range, scale_step)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    img_t = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()
    img_t = F.interpolate(img_t, size=(nh, nw), mode="bilinear", align_corners=False)
    image = img_t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    lab_t = torch.from_numpy(np.array(label, copy=True))[None, None].float()
    label = F.interpolate(lab_t, size=(nh, nw), mode="nearest")[0, 0].to(torch.uint8).numpy()
    ch, cw = crop_size
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    pad = np.zeros((nh, nw), dtype=bool)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        pad = np.pad(pad, ((0, ph), (0, pw)), constant_values=True)
    y = int(rng.integers(0, label.shape[0] - ch + 1))
    x = int(rng.integers(0, label.shape[1] - cw + 1))
    image, label, pad = image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw], pad[y : y + ch, x : x + cw]
    if rng.random() < 0.5 and flip:
        image, label, pad = image[:, ::-1], label[:, ::-1], pad[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label), np.ascontiguousarray(pad)
