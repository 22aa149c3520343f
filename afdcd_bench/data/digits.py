"""The embedded "digits" benchmark: dense segmentation scenes built offline from real digits.

Source: scikit-learn's bundled UCI handwritten digits (1797 8x8 images, values 0-16), so no
download is ever needed. Generation (deterministic, numpy Generator seeded by `seed`):
  * source split: digits with index % 5 == 0 feed the val scenes, all others the train scenes,
    so no handwritten digit appears in both splits;
  * each scene is SIZE x SIZE (64) RGB: a random base colour, two random sinusoidal gratings
    (period 6-30 px, random orientation, amplitude 10-30), 1-3 random distractor strokes
    (background class);
  * then 2-4 digit tiles: a square of side 20-36 px in a dark random colour (0-90 a channel)
    at a random position, with the digit upsampled bilinearly to the tile's size and drawn in a
    bright random colour (170-255) with alpha = intensity / 16; later tiles cover earlier ones;
  * Gaussian pixel noise (sigma 8), clipped to 0-255;
  * label: background 0, every pixel of a digit's visible tile d + 1 (11 classes).
Tiles rather than strokes are labelled because logits come at stride 8: a stroke a few pixels
wide shares each stride-8 cell with more background than digit. Version 2 (96 px, stroke labels)
left every net, teacher included, predicting background only at demo budgets.
The scenes are written once as a `datasets` Arrow dataset under the cache folder
($AFDCD_CACHE, default ~/.cache/afdcd-bench) and memory-mapped from there afterwards.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import SegmentationDataset

SIZE = 64
NUM_CLASSES = 11
SPLIT_SIZES = {"train": 1200, "val": 200}
TILE_SIDES = (20, 36)
VERSION = 3
CLASS_NAMES = ["background"] + [f"digit_{d}" for d in range(10)]


def cache_root() -> Path:
    """$AFDCD_CACHE, else ~/.cache/afdcd-bench: a folder this process can write (checked, with the
    variable named: an empty value would otherwise write into the working directory)."""
    given = os.environ.get("AFDCD_CACHE")
    if given is not None and not given.strip():
        raise ValueError("AFDCD_CACHE is set but empty: unset it (default ~/.cache/afdcd-bench) or give a folder")
    root = Path(given) if given else Path.home() / ".cache" / "afdcd-bench"
    if root.exists() and not root.is_dir():
        raise ValueError(f"AFDCD_CACHE {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cache folder {root} ($AFDCD_CACHE) cannot be created: {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ValueError(f"cache folder {root} ($AFDCD_CACHE) is not writable: give a writable folder")
    return root


def _source_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.arange(len(d.target))
    keep = idx % 5 == 0 if split == "val" else idx % 5 != 0
    return d.images[keep].astype(np.float32) / 16.0, d.target[keep].astype(np.int64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(40, 215, size=3)
    for _ in range(2):
        period, theta = rng.uniform(6, 30), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(10, 30) * rng.uniform(-1, 1, size=3)
    for _ in range(int(rng.integers(1, 4))):  # distractor strokes
        y0, x0 = rng.integers(0, size, 2)
        length, theta = rng.uniform(10, 40), rng.uniform(0, np.pi)
        t = np.linspace(0, 1, 60)
        ys = np.clip((y0 + t * length * np.sin(theta)).astype(int), 0, size - 1)
        xs = np.clip((x0 + t * length * np.cos(theta)).astype(int), 0, size - 1)
        colour = rng.uniform(0, 255, size=3)
        for dy in (0, 1):
            img[np.clip(ys + dy, 0, size - 1), xs] = colour
    return img


def _paste_tile(rng: np.random.Generator, img: np.ndarray, digit: np.ndarray, side: int) -> tuple[int, int]:
    """Draw one digit tile of `side` px at a random position of `img` (in place); its top-left corner."""
    glyph = torch.from_numpy(digit)[None, None]
    alpha = F.interpolate(glyph, size=(side, side), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    y, x = (int(v) for v in rng.integers(0, img.shape[0] - side + 1, 2))
    tile, ink = rng.uniform(0, 90, size=3), rng.uniform(170, 255, size=3)
    img[y : y + side, x : x + side] = tile * (1 - alpha[..., None]) + ink * alpha[..., None]
    return y, x


def _with_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        k = int(rng.integers(0, len(targets)))
        s = int(rng.integers(TILE_SIDES[0], TILE_SIDES[1] + 1))
        y, x = _paste_tile(rng, img, images[k], s)
        label[y : y + s, x : x + s] = targets[k] + 1
    return _with_noise(rng, img), label


CLS_SIZE = 32
CLS_SIZES = {"train": 6000, "val": 1000}


def render_digit(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray, size: int = CLS_SIZE) -> tuple[np.ndarray, int]:
    """One digit tile on a scene background: the classification task standing in for ImageNet."""
    img = _background(rng, size)
    k = int(rng.integers(0, len(targets)))
    _paste_tile(rng, img, images[k], int(rng.integers(size * 5 // 8, size * 7 // 8 + 1)))
    return _with_noise(rng, img), int(targets[k])


def classification_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3 uint8, digit labels N) of the stand-in classification task, from the
    same source split as the scenes (no val digit is ever trained on); made once and cached."""
    if split not in CLS_SIZES:
        raise ValueError(f"the digits classification task has splits {sorted(CLS_SIZES)}, not {split!r}")
    path = cache_root() / f"digits-cls-v1-s{seed}-{CLS_SIZE}px-{split}.npz"
    if not path.is_file():
        from ..files import atomic_write

        images, targets = _source_digits(split)
        rng = np.random.default_rng([seed, 2 if split == "train" else 3])
        pairs = [render_digit(rng, images, targets) for _ in range(CLS_SIZES[split])]
        x = np.stack([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs], np.int64)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, images=x, labels=y)

        atomic_write(path, write)
    with np.load(path) as data:
        return data["images"], data["labels"]


def generate(split: str, count: int, seed: int = 0) -> dict[str, list[Any]]:
    images, targets = _source_digits(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out: dict[str, list[Any]] = {"image": [], "label": [], "name": []}
    for i in range(count):
        img, lab = render_scene(rng, images, targets)
        out["image"].append(img)
        out["label"].append(lab)
        out["name"].append(f"digits_{split}_{i:05d}")
    return out


def load_split(split: str, root: str | os.PathLike | None = None, seed: int = 0):
    """The Arrow dataset of one split, generated on first use and cached on disk."""
    import datasets

    if split not in SPLIT_SIZES:
        raise ValueError(f"digits has splits {sorted(SPLIT_SIZES)}, not {split!r}")
    base = Path(root) if root else cache_root()
    path = base / f"digits-v{VERSION}-s{seed}-{SIZE}px" / split
    if not (path / "dataset_info.json").is_file():
        features = datasets.Features(
            {
                "image": datasets.Array3D(shape=(SIZE, SIZE, 3), dtype="uint8"),
                "label": datasets.Array2D(shape=(SIZE, SIZE), dtype="uint8"),
                "name": datasets.Value("string"),
            }
        )
        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_dict(generate(split, SPLIT_SIZES[split], seed), features=features)
        tmp = path.with_name(f".{split}.tmp-{os.getpid()}")
        ds.save_to_disk(str(tmp))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.replace(tmp, path)
    return datasets.load_from_disk(str(path)).with_format("numpy")


@functools.lru_cache(maxsize=8)
def _decoded(path: str, stamp: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A split's arrays, read once per process (every run of a demo or a test reads the same ones);
    read-only so that no dataset can change another's."""
    import datasets

    table = datasets.load_from_disk(path).with_format("numpy")
    images = np.asarray(table["image"], dtype=np.uint8)
    labels = np.asarray(table["label"], dtype=np.uint8)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels, [str(n) for n in table["name"]]


class DigitsDataset(SegmentationDataset):
    def __init__(self, root: str | None, split: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.split = split
        self.table = load_split(split, root)
        path = Path(self.table.cache_files[0]["filename"]).parent
        # Small enough (1200 x 12 KB) to hold decoded: avoids Arrow row reads per item.
        self.images, self.labels, self.names = _decoded(str(path), (path / "dataset_info.json").stat().st_mtime)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        return self.images[index], self.labels[index], str(self.names[index])
