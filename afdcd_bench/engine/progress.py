"""Progress for people: a rich bar on a terminal, plain timed lines in logs, CI and pipes.

Off a terminal a live bar prints nothing until it ends, so long work looked hung; there a line is
printed at least every AFDCD_LOG_SECONDS (default 30) instead.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from rich import get_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(enabled: bool) -> Progress:
    """Times before the bar and the bar last, so a narrow terminal cuts the bar, not the times."""
    return Progress(
        TextColumn("[bold]{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), BarColumn(bar_width=None),
        disable=not (enabled and get_console().is_terminal), transient=False,
    )


def log_seconds() -> float:
    text = os.environ.get("AFDCD_LOG_SECONDS", "30")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise ValueError(f"AFDCD_LOG_SECONDS={text!r}: expected a number of seconds >= 0 (the interval of the plain progress "
                         "lines; 0: every step)")
    return value


class Heartbeat:
    """Plain 'name: step N/T' lines at most every `every` seconds (only when not on a terminal)."""

    def __init__(self, name: str, total: int, start: int, print_fn: Callable[[str], Any], enabled: bool):
        self.name, self.total, self.start = name, total, start
        self.print_fn, self.enabled = print_fn, enabled
        self.every = log_seconds()
        self.t0 = self.last = time.monotonic()

    def step(self, step: int, info: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        done = step - self.start
        left = (now - self.t0) / done * (self.total - step) if done > 0 else float("nan")
        eta = f", about {left:.0f} s left" if left == left else ""
        self.print_fn(f"{self.name}: step {step}/{self.total} ({100 * step / self.total:.0f}%) {info}, {now - self.t0:.0f} s{eta}".replace("  ", " "))
