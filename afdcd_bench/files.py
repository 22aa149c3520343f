"""Atomic file writes with the file mode a plain `open` gives.

Written to a temporary file, then renamed over the target: a crash leaves the old file or none,
never half of one. mkstemp makes 0600 files, unreadable to the other users of a shared machine,
so the finished file gets 0666 less the umask, as any other file would.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def usual_mode(path: str | os.PathLike) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write(path: Path, write: Callable[[str], object]) -> Path:
    """write(tmp_path) fills a temporary file beside `path`, which then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
