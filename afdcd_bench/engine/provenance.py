"""Is a weights file still the one its producer recorded? (docs/runs.md, "A file a run reads")

A run reads files that other runs or commands wrote: a teacher's `best`/`final` checkpoint, a stage's
output (MasKD's tokens), an imported release. Each producer keeps the file's sha256: the finished
run's `record.json` beside it, or `weights/manifest.json` for `weights fetch`. A file that no longer
has that hash (overwritten, truncated, a disk fault, another run written over it) would train a
student from something no record describes, so it is refused before use, naming the file, both hashes
and where the recorded one is kept.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import project_root
from ..config.runs import resolve_recorded
from .identity import file_sha256

RECORD = "record.json"
# the record keys that name a file the run wrote, and the keys holding their sha256
PRODUCED = (("checkpoint", "checkpoint_sha256"), ("best_checkpoint", "best_checkpoint_sha256"),
            ("stage_weights", "stage_weights_sha256"))


class CheckpointMismatch(ValueError):
    """A file is not the one its producer recorded."""


def produced_files(record: dict) -> dict[Path, str]:
    """The files a run record says its run wrote, with their recorded sha256."""
    out = {}
    for path_key, hash_key in PRODUCED:
        if record.get(path_key) and record.get(hash_key):
            out[resolve_recorded(record[path_key], project_root()).resolve()] = record[hash_key]
    return out


def recorded_sha256(path: str | os.PathLike) -> tuple[str, Path] | None:
    """The sha256 that the producer of `path` recorded, and the file that records it; None where no
    producer is known (a file from elsewhere: then only its contents can be checked)."""
    p = Path(path).resolve()
    record = p.parent / RECORD
    if record.is_file():
        try:
            held = produced_files(json.loads(record.read_text()))
        except (OSError, ValueError):
            held = {}
        if p in held:
            return held[p], record
    from ..models.fetch import recorded_import

    return recorded_import(p)


def check_recorded(path: str | os.PathLike, what: str) -> str | None:
    """Refuse `path` if it differs from what its producer recorded; returns the recorded sha256 (None: no record)."""
    found = recorded_sha256(path)
    if found is None:
        return None
    want, where = found
    got = file_sha256(path)
    if got != want:
        raise CheckpointMismatch(
            f"{what} {path} has sha256 {got}, but {where} recorded {want} when it was written: the file changed since "
            "(overwritten, truncated or damaged). Restore it, or train its run again (reproduce does that by itself "
            "for runs it owns)")
    return want


def check_finite_weights(state: dict, path: str | os.PathLike, what: str) -> None:
    """A damaged file can still parse and hold NaN or infinite weights; name the file, not the loss."""
    import torch

    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatch(f"{what} {path} holds non-finite values in {len(bad)} tensor(s) ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}): the file is damaged or was written by a run that "
                                 "diverged; point at another file")


def check_inputs(paths: dict[str, str]) -> None:
    """Every file a run reads (identity.input_paths: recipe key -> path) against its producer's record."""
    for key, path in paths.items():
        if Path(path).is_file():
            check_recorded(path, key)
