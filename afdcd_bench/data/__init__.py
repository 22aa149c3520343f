"""Datasets: the five benchmarks in their standard layouts and the embedded `digits` one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import SegmentationDataset
from .cache import MODES, CacheError, DecodedCache, cache_folder
from .benchmarks import BENCHMARKS, DatasetLayoutError, FolderDataset, default_data_root, describe
from .digits import NUM_CLASSES as DIGITS_CLASSES
from .digits import DigitsDataset

DATASET_NAMES = tuple(BENCHMARKS) + ("digits",)


def num_classes(name: str) -> int:
    return DIGITS_CLASSES if name == "digits" else BENCHMARKS[name].num_classes


def resolve_root(name: str, root: str | os.PathLike | None) -> Path | None:
    """root=None: <data root>/<benchmark folder>; digits: the cache folder."""
    if name == "digits":
        return Path(root) if root else None
    if root is None:
        return default_data_root() / BENCHMARKS[name].folder
    return Path(root)


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    train: bool = False,
    crop_size: tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
    flip: bool = True,
    scale_step: float | None = None,
    cache: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> SegmentationDataset:
    """A split of a dataset. cache (auto | off | required): a benchmark's split is read through its
    decoded-pixel cache (data/cache.py) where a valid one exists; `required` refuses to go without."""
    kwargs = dict(train=train, crop_size=crop_size, scale_range=scale_range, seed=seed, flip=flip,
                  scale_step=scale_step)
    if name == "digits":
        return DigitsDataset(str(root) if root else None, split, **kwargs)  # generated arrays: nothing to decode
    if name not in BENCHMARKS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    dataset = FolderDataset(BENCHMARKS[name], resolve_root(name, root), split, **kwargs)
    if cache not in MODES:
        raise ValueError(f"data.cache must be one of {', '.join(MODES)}, got {cache!r}")
    if cache != "off":
        folder = cache_folder(dataset.root, name, split, cache_dir)
        dataset.cache, why = DecodedCache.open(dataset, folder)
        if dataset.cache is not None:
            dataset.cache_note = f"{name} {split}: reading decoded pixels from the cache at {folder}"
        elif cache == "required":
            raise CacheError(f"data.cache=required, but {why}")
        else:
            dataset.cache_note = f"{name} {split}: decoding every image ({why}; `afdcd-bench data cache {name}` builds one)"
    return dataset


__all__ = [
    "BENCHMARKS",
    "DATASET_NAMES",
    "DatasetLayoutError",
    "SegmentationDataset",
    "build_dataset",
    "describe",
    "num_classes",
    "resolve_root",
]
