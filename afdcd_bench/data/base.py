"""A dataset of (image, label) items with per-sample seeded augmentation."""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import normalize, train_augment


class SegmentationDataset(Dataset):
    """Subclasses provide __len__, load(index) -> (uint8 HxWx3 RGB, uint8 HxW label, name)."""

    def __init__(
        self,
        train: bool = False,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        normalization: dict[str, Any] | None = None,
        seed: int = 0,
        flip: bool = True,
        scale_step: float | None = None,
    ):
        if train and crop_size is None:
            raise ValueError("a training dataset needs crop_size (h, w)")
        self.train = train
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = tuple(scale_range)
        self.normalization = normalization
        self.seed = int(seed)
        self.flip = bool(flip)
        self.scale_step = scale_step
        self.epoch = 0
        self.cache: Any = None  # a DecodedCache (data/cache.py) that `load` is read through, where one is valid
        self.cache_note = ""  # one line: whether the decoded-pixel cache is read, and why not

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """Augmentation randomness fixed by (seed, epoch, index): repeatable across workers and resumes."""
        return np.random.default_rng([self.seed, self.epoch, index])

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Each benchmark reads its own layout."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label, name = self.cache.load(index) if self.cache is not None else self.load(index)
        pad = None
        if self.train:
            image, label, pad = train_augment(image, label, self.crop_size, self.scale_range, self.rng(index), self.flip,
                                              self.scale_step)
        x = normalize(image, self.normalization)
        if pad is not None and pad.any():
            x[:, torch.from_numpy(pad)] = 0.0  # the mean colour, as the release pads after normalising
        return {
            "image": x,
            "label": torch.from_numpy(np.array(label, dtype=np.int64)),  # a copy: the source may be read-only
            "name": name,
        }


def lut(mapping: dict[int, int], default: int) -> np.ndarray:
    table = np.full(256, default, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


LabelMap = Callable[[np.ndarray], np.ndarray]
