"""Decoded pixels, cached once: a split's images and mapped labels as uint8 arrays read without decoding.

Decoding a 2048x1024 PNG costs most of a training item; the released pipeline, like ours without a
cache, decodes every frame again at every epoch. `afdcd-bench data cache BENCHMARK` writes each item's
decoded image (HxWx3) and mapped label (HxW) once as `.npy` files, which a reader memory-maps: nothing
is decoded, the pages are shared by every run of the node, and the augmentation that follows is the
same code on the same arrays, so a cached item equals an uncached one bit for bit.

Where: `<data root>/.afdcd-cache/<benchmark>/<split>/` by default; `data.cache_dir` or the
`AFDCD_DATA_CACHE` variable put it elsewhere (a node's local disk). What binds it to its sources: the
manifest lists, for every item, its image and label files (relative to the data root) with their size
and modification time; a source that changed (or was replaced) since makes the cache stale, and a
stale or partial cache is named and never read. The manifest is written last, atomically: a build
stopped midway leaves a partial cache (`building.jsonl`, the entries done) that the next build
continues and no reader takes.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..files import atomic_write

if TYPE_CHECKING:  # the dataset module imports this one
    from .benchmarks import FolderDataset

KIND = "afdcd-bench-decoded-cache"
VERSION = 1
DEFAULT_DIR = ".afdcd-cache"
ENV = "AFDCD_DATA_CACHE"
MODES = ("auto", "off", "required")


class CacheError(RuntimeError):
    """A cache that was required is missing, partial or stale; or one could not be built."""


def cache_folder(root: Path, benchmark: str, split: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cache of a split lives: cache_dir, else $AFDCD_DATA_CACHE, else beside the data."""
    base = cache_dir or os.environ.get(ENV) or Path(root) / DEFAULT_DIR
    return Path(base) / benchmark / split


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _entry_files(folder: Path, index: int) -> tuple[Path, Path]:
    return folder / f"{index:07d}.image.npy", folder / f"{index:07d}.label.npy"


class DecodedCache:
    """A complete cache of one split, checked against its sources when opened; `load` maps its arrays."""

    def __init__(self, folder: Path, names: list[str]):
        self.folder, self.names = folder, names

    @classmethod
    def open(cls, dataset: "FolderDataset", folder: Path) -> tuple["DecodedCache | None", str]:
        """(the cache, "") when it is complete and matches every source; else (None, why not)."""
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            if (folder / "building.jsonl").is_file():
                return None, f"the cache at {folder} is partial (its build was stopped): `afdcd-bench data cache` continues it"
            return None, f"no cache at {folder}"
        try:
            body = json.loads(manifest.read_text())
            entries = body["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, f"the cache manifest {manifest} is damaged: build the cache again"
        if body.get("kind") != KIND or body.get("version") != VERSION:
            return None, f"{manifest} is not a decoded cache of this version: build the cache again"
        want = _sources(dataset)
        if len(entries) != len(want):
            return None, (f"the cache at {folder} holds {len(entries)} items, the split has {len(want)} now: "
                          "build the cache again")
        stale = []
        for index, (entry, (image, label)) in enumerate(zip(entries, want)):
            for key, path in (("image", image), ("label", label)):
                rel = _relative(path, dataset.root)
                if entry[key] != rel or not path.is_file() or entry[f"{key}_stamp"] != _stamp(path):
                    stale.append(rel)
            if not all(p.is_file() for p in _entry_files(folder, index)):
                stale.append(f"cache entry {index}")
        if stale:
            return None, (f"the cache at {folder} is stale: {len(stale)} source file(s) changed since it was built "
                          f"(first: {stale[0]}): build it again (`afdcd-bench data cache`)")
        return cls(folder, [e["name"] for e in entries]), ""

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, label = _entry_files(self.folder, index)
        return np.load(image, mmap_mode="r"), np.load(label, mmap_mode="r"), self.names[index]

    def __len__(self) -> int:
        return len(self.names)


def _sources(dataset: "FolderDataset") -> list[tuple[Path, Path]]:
    return [(Path(i), Path(lab)) for i, lab in dataset.items]


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def bytes_needed(dataset: "FolderDataset") -> int:
    """The cache's size: H x W x 4 bytes per item (RGB and label), from the images' headers (no decoding)."""
    from PIL import Image

    total = 0
    for image, _ in _sources(dataset):
        with Image.open(image) as im:
            w, h = im.size
        total += h * w * 4 + 2 * 128  # the two .npy headers
    return total


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
    os.replace(tmp, path)


def build_cache(dataset: "FolderDataset", folder: Path, log: Callable[[str], None] = print) -> Path:
    """Decode every item of the dataset's split once into `folder` (see the module). Resumable: the
    entries a stopped build finished (and whose sources did not change) are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    progress = folder / "building.jsonl"
    manifest = folder / "manifest.json"
    sources = _sources(dataset)
    done: dict[int, dict] = {}
    if manifest.is_file():  # rebuilding over a complete cache: its entries count as done where still right
        try:
            done = dict(enumerate(json.loads(manifest.read_text())["entries"]))
        except (OSError, ValueError, KeyError, TypeError):
            done = {}
        manifest.unlink()
    if progress.is_file():
        for line in progress.read_text().splitlines():
            try:
                entry = json.loads(line)
                done[int(entry["index"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the stop: that entry is made again
    fresh = {}
    for index, (image, label) in enumerate(sources):
        entry = done.get(index)
        if entry and entry.get("image") == _relative(image, dataset.root) and entry.get("image_stamp") == _stamp(image) \
                and entry.get("label") == _relative(label, dataset.root) and entry.get("label_stamp") == _stamp(label) \
                and all(p.is_file() for p in _entry_files(folder, index)):
            fresh[index] = entry
    todo = [i for i in range(len(sources)) if i not in fresh]
    need = int(bytes_needed(dataset) * len(todo) / max(1, len(sources)))
    free = shutil.disk_usage(folder).free
    log(f"{dataset.bench.name} {dataset.split}: {len(sources)} items, {len(fresh)} cached already, {len(todo)} to decode "
        f"into {folder}: about {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free there")
    if need > free:
        raise CacheError(f"{dataset.bench.name} {dataset.split}: the cache needs about {need / 1e9:.2f} GB more at {folder}, "
                         f"{free / 1e9:.2f} GB are free: free some space or give another --cache-dir")
    current: tuple[Path, Path] | None = None
    try:
        with open(progress, "w") as out:  # the entries still right, then each new one as it is finished
            for index in sorted(fresh):
                out.write(json.dumps({**fresh[index], "index": index}) + "\n")
            out.flush()
            for n, index in enumerate(todo):
                image_path, label_path = sources[index]
                image, label, name = dataset.load(index)
                current = _entry_files(folder, index)
                _save(current[0], image)
                _save(current[1], label)
                entry = {"index": index, "name": name, "image": _relative(image_path, dataset.root),
                         "image_stamp": _stamp(image_path), "label": _relative(label_path, dataset.root),
                         "label_stamp": _stamp(label_path), "shape": list(label.shape)}
                out.write(json.dumps(entry) + "\n")
                out.flush()
                fresh[index], current = entry, None
                if (n + 1) % 500 == 0:
                    log(f"{dataset.bench.name} {dataset.split}: {len(fresh)}/{len(sources)} items cached")
    except OSError as exc:
        for f in current or ():  # the entry being written: never left half there
            for path in (f, f.with_name(f.name + ".tmp")):
                path.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise CacheError(f"disk full at {folder} after {len(fresh)} of {len(sources)} items: the partial cache is not used; "
                             "free some space and rerun `afdcd-bench data cache` to continue") from None
        raise
    entries = [{k: v for k, v in fresh[i].items() if k != "index"} for i in range(len(sources))]
    body = {"kind": KIND, "version": VERSION, "benchmark": dataset.bench.name, "split": dataset.split,
            "root": str(Path(dataset.root).resolve()), "entries": entries}
    try:
        atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps(body)))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CacheError(f"disk full at {folder} while writing the cache's manifest: the cache is not used; free some "
                             "space and rerun `afdcd-bench data cache` to finish it") from None
        raise
    progress.unlink()
    size = sum(p.stat().st_size for p in folder.glob("*.npy"))
    log(f"{dataset.bench.name} {dataset.split}: cache complete at {folder} ({len(sources)} items, {size / 1e9:.2f} GB)")
    return folder
