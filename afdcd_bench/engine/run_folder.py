"""Guards on a run folder before step 0: writable, held by one run at a time, and resumed only
from state written under the same settings (config/runs.py says which keys count)."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from ..config import settings_diff

class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message says what to do instead."""


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and write a scratch file into it, so a read-only folder is found
    before hours of training rather than at the first save."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise RunFolderError(f"{what} {folder} is not writable ({exc.strerror or exc}); choose another folder or fix its permissions") from None


class RunLock:
    """An exclusive lock on a run folder (flock: released by the kernel if the process dies)."""

    def __init__(self, path: Path):
        self.path = path  # beside the run folder, so setting the folder aside keeps the lock
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunFolderError(
                f"run folder {self.path.with_suffix('')} is in use by {holder}; wait for that run to end, "
                f"or give this one another folder (output_dir=PATH or another train.seed)"
            ) from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"process {os.getpid()} on {socket.gethostname()} (started {started}: {' '.join(sys.argv)})\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def shown_diff(diff: list[str]) -> str:
    """The first few differing settings, for a message."""
    return "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")


def check_finished(run_dir: Path, record: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to take a finished run's record (engine/finished.py) for a run of other settings, inputs or launch."""
    from .identity import record_identity

    diff = settings_diff(record_identity(record), current)
    if diff:
        raise RunFolderError(f"{run_dir} holds a finished run with other settings ({shown_diff(diff)}): rerun with "
                             "--no-resume to start over in that folder (the old one is kept aside), or set output_dir=PATH "
                             "to keep both")


def check_resumable(run_dir: Path, state: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to continue state that was written under other settings, inputs or launch (engine/identity.py)."""
    fresh = "rerun with --no-resume to start over in that folder (the old one is kept aside), or set output_dir=PATH to keep both"
    progress = saved or {}
    settings = progress.get("settings")
    if settings is None:
        raise RunFolderError(f"{state} holds a stopped run that does not say its settings (written by an older version): {fresh}")
    diff = settings_diff(settings, current)
    if diff:
        iterations = (settings.get("train") or {}).get("iterations")
        what = "finished run" if iterations is not None and progress.get("step", 0) >= iterations else "stopped run"
        shown = shown_diff(diff)
        raise RunFolderError(f"{run_dir} holds a {what} with other settings ({shown}): {fresh}")


def check_record_slot(path: Path, current: dict[str, Any]) -> None:
    """Refuse to start a run whose record would replace the record of another run (other settings,
    inputs or launch): a sweep over one recipe and seed must never keep only its last point."""
    from .identity import record_identity
    from .records import RecordError, read_record

    if not path.exists():
        return
    elsewhere = "give this run another --results-dir (and output_dir=PATH for its run folder), or move that record away"
    try:
        old = read_record(path)
    except RecordError as exc:
        raise RunFolderError(f"{exc}; this run would replace it: {elsewhere}") from None
    diff = settings_diff(record_identity(old), current)
    if diff:
        shown = shown_diff(diff)
        raise RunFolderError(f"{path} is the record of a run with other settings ({shown}); this run would replace it: {elsewhere}")


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier run's folder out of the way (never delete it) before starting over."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    run_dir.rename(dest)
    return dest


def read_progress(state: Path) -> dict[str, Any] | None:
    """A saved state's progress.json (its step and the identity it was written under)."""
    try:
        data = json.loads((state / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
