"""A line for people on stderr, written in one piece.

The processes of a launch share one pipe (`afdcd-bench launch` reads it). `print` of an
unbuffered stream writes the text and its newline separately, so two processes' lines could join:
seen here, two processes' error sentences on one line, which the launcher then could not tell
apart. One write of a short line to a pipe is not split (POSIX: up to PIPE_BUF bytes).
"""
from __future__ import annotations

import sys


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
