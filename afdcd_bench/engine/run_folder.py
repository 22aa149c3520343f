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


def check_resumable(run_dir: Path, state: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to continue state that was written under other settings."""
    fresh = "rerun with --no-resume to start over in that folder (the old one is kept aside), or set output_dir=PATH to keep both"
    if saved is None:
        raise RunFolderError(f"{state} holds a stopped run that does not say its settings (written by an older version): {fresh}")
    diff = settings_diff(saved, current)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise RunFolderError(f"{run_dir} holds a stopped run with other settings ({shown}): {fresh}")


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier run's folder out of the way (never delete it) before starting over."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    run_dir.rename(dest)
    return dest


def read_progress_settings(state: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state / "progress.json").read_text()).get("settings")
    except (OSError, json.JSONDecodeError):
        return None
