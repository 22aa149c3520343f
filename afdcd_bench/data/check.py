"""`afdcd-bench data check`: walk a dataset folder and report everything wrong with it at once.

Training stops at the first bad file it meets, hours in; this finds them all up front: split
sizes against the published ones, images without labels (and labels without images), files
that do not decode, image/label size mismatches and label values outside the benchmark's set.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .benchmarks import BENCHMARKS, DatasetLayoutError, describe, read_pair


@dataclass
class SplitReport:
    split: str
    expected: int
    images: int = 0
    labels: int = 0
    problems: list[str] = field(default_factory=list)  # one line per fault, naming the file

    @property
    def count_ok(self) -> bool:
        return self.images == self.expected and self.labels == self.expected


@dataclass
class CheckReport:
    name: str
    root: str
    splits: list[SplitReport]

    def ok(self, check_counts: bool = True) -> bool:
        return all(not s.problems and (s.count_ok or not check_counts) for s in self.splits)


def _check_pair(bench, img: Path, lab: Path) -> str | None:
    try:
        read_pair(bench, img, lab)
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def check_split(name: str, root: Path, split: str, decode: bool = True, workers: int | None = None) -> SplitReport:
    bench = BENCHMARKS[name]
    rep = SplitReport(split, bench.splits.get(split, 0))
    try:
        pairs = bench.pairs(root, split)
    except DatasetLayoutError as exc:
        rep.problems.append(str(exc).splitlines()[0])
        return rep
    complete = []
    for img, lab in pairs:
        if not img.is_file():
            rep.problems.append(f"image {img} is missing (listed for the {split} split)")
            continue
        rep.images += 1
        if not lab.is_file():
            rep.problems.append(f"image {img} has no label (expected {lab})")
            continue
        rep.labels += 1
        complete.append((img, lab))
    if bench.label_files is not None:
        paired = {lab for _, lab in pairs}
        for lab in bench.label_files(root, split):
            if lab not in paired:
                rep.problems.append(f"label {lab} has no image")
    if decode:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for problem in pool.map(lambda p: _check_pair(bench, *p), complete):
                if problem:
                    rep.problems.append(problem)
    return rep


def check_digits(root: Path | None) -> CheckReport:
    from .digits import NUM_CLASSES, SPLIT_SIZES, DigitsDataset

    splits = []
    for split, expected in SPLIT_SIZES.items():
        ds = DigitsDataset(str(root) if root else None, split)
        rep = SplitReport(split, expected, len(ds), len(ds))
        bad = np.setdiff1d(np.unique(ds.labels), np.arange(NUM_CLASSES))
        if bad.size:
            rep.problems.append(f"digits {split}: label values {bad.tolist()} outside 0..{NUM_CLASSES - 1}")
        splits.append(rep)
    return CheckReport("digits", str(root or "(cache)"), splits)


def check_dataset(name: str, root: str | os.PathLike | None, splits: Iterable[str] | None = None, decode: bool = True,
                  workers: int | None = None) -> CheckReport:
    if name == "digits":
        return check_digits(Path(root) if root else None)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BENCHMARKS) + ['digits']}")
    from . import resolve_root

    path = resolve_root(name, root)
    if not path.is_dir():
        raise DatasetLayoutError(f"{name}: data folder {path} does not exist\n{describe(name, path)}")
    names = list(splits or BENCHMARKS[name].splits)
    return CheckReport(name, str(path), [check_split(name, path, s, decode, workers) for s in names])
