"""Prediction PNGs for `afdcd-bench eval --save-predictions DIR`.

raw/<name>.png: train ids (the model's classes) as 8-bit grey; color/<name>.png: the same with
the benchmark's palette; Cityscapes also gets labelIds/<name>.png with the official label ids,
the format its test server takes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.benchmarks import CITYSCAPES_TRAINID_TO_ID

# trainId order; checked against cityscapesscripts' table where installed (tests/test_data.py)
CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


TRAINID_TO_LABELID = np.zeros(256, np.uint8)  # anything not a train id -> 0 (unlabeled)
TRAINID_TO_LABELID[: len(CITYSCAPES_TRAINID_TO_ID)] = CITYSCAPES_TRAINID_TO_ID


def bit_palette() -> np.ndarray:
    """The usual 256-entry segmentation palette: class bits spread over the high bits of R, G, B."""
    pal = np.zeros((256, 3), np.uint8)
    for k in range(256):
        c, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[k] = (r, g, b)
    return pal


def palette(benchmark: str) -> np.ndarray:
    pal = bit_palette()
    if benchmark == "cityscapes":
        pal[: len(CITYSCAPES_COLOURS)] = CITYSCAPES_COLOURS
    pal[255] = (0, 0, 0)
    return pal


class PredictionWriter:
    def __init__(self, out_dir: str | Path, benchmark: str):
        self.out = Path(out_dir)
        self.benchmark = benchmark
        self.palette = palette(benchmark).flatten().tolist()
        self.dirs = ["raw", "color"] + (["labelIds"] if benchmark == "cityscapes" else [])
        for d in self.dirs:
            (self.out / d).mkdir(parents=True, exist_ok=True)

    def __call__(self, names: Sequence[str], preds: torch.Tensor) -> None:
        for name, pred in zip(names, preds.to("cpu", torch.uint8).numpy()):
            Image.fromarray(pred).save(self.out / "raw" / f"{name}.png")
            colour = Image.fromarray(pred)
            colour.putpalette(self.palette)  # an 8-bit grey image becomes "P" with these colours
            colour.save(self.out / "color" / f"{name}.png")
            if self.benchmark == "cityscapes":
                Image.fromarray(TRAINID_TO_LABELID[pred]).save(self.out / "labelIds" / f"{name}.png")
