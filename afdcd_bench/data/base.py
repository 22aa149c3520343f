"""A dataset of (image, label) items with per-sample seeded augmentation."""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import augment


class SegmentationDataset(Dataset):
    """Subclasses provide __len__, load(index) -> (uint8 HxWx3 RGB, uint8 HxW label, name)."""

    def __init__(
        self,
        train: bool = False,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
        flip: bool = True,
        scale_step: float | None = None,
    ):
        if train and crop_size is None:
            raise ValueError("a training dataset needs crop_size (h, w)")
        self.train = train
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = tuple(scale_range)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.scale_step = scale_step
        # in shared memory: loader workers kept between epochs (data.persistent_workers) hold copies of
        # the dataset made when they started, and must still draw each epoch's augmentation
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.cache: Any = None  # a DecodedCache (data/cache.py) that `load` is read through, where one is valid
        self.cache_note = ""  # one line: whether the decoded-pixel cache is read, and why not

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def rng(self, index: int) -> np.random.Generator:
        """Augmentation randomness fixed by (seed, epoch, index): repeatable across workers and resumes."""
        return np.random.default_rng([self.seed, self.epoch, index])

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Each benchmark reads its own layout."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        """uint8 pixels and labels, as small as a batch gets for the copy to the device, where
        batches.model_inputs normalises them: "valid" is the box of the crop that holds image."""
        image, label, name = self.cache.load(index) if self.cache is not None else self.load(index)
        if self.train:
            x, y, box = augment(image, label, self.crop_size, self.scale_range, self.rng(index), self.flip, self.scale_step)
        else:
            x = torch.from_numpy(np.array(np.transpose(image, (2, 0, 1)), order="C"))  # a copy: the source may be read-only
            y, box = torch.from_numpy(np.array(label, dtype=np.uint8)), (0, label.shape[0], 0, label.shape[1])
        return {"image": x, "label": y, "valid": torch.tensor(box, dtype=torch.int32), "name": name}

def lut(mapping: dict[int, int], default: int) -> np.ndarray:
    table = np.full(256, default, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


LabelMap = Callable[[np.ndarray], np.ndarray]
