"""Waiting on the other processes of a launch (docs/distributed.md, "A stalled process").

Every step of a run of several processes ends in collectives (the gradient all-reduce, the
reduced loss terms), so a process whose peer stalled (stopped, swapping, a hung file system)
waits there without a word: its heartbeat fires on steps only. Two things here: a watch that says,
on each process, that no step has finished for a while and what it is probably waiting for; and
the process group's timeout, `train.collective_timeout`, after which the wait gives up with one
sentence instead of torch's transport error.
"""
from __future__ import annotations

import contextlib
import datetime
import threading
import time
from typing import Any, Callable, Iterator

from accelerate import InitProcessGroupKwargs


class CollectiveTimeout(RuntimeError):
    """A collective waited `train.collective_timeout` seconds for another process and gave up."""


def process_group_kwargs(processes: int, cuda: bool, timeout_s: float) -> list[InitProcessGroupKwargs]:
    """The process group's settings: gloo for CPU processes (DeepSpeed otherwise asserts on batch
    sizes), and the collective timeout."""
    if processes <= 1:
        return []
    return [InitProcessGroupKwargs(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))]


def is_collective_timeout(exc: BaseException) -> bool:
    """gloo: 'Timed out waiting Nms for recv operation to complete' (measured, torch 2.x); NCCL's
    watchdog: 'Watchdog caught collective operation timeout'."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("Timed out waiting" in text or "collective operation timeout" in text)


def is_peer_gone(exc: BaseException) -> bool:
    """gloo, when the other end's process ended: 'Connection closed by peer' (measured) or reset."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("Connection closed by peer" in text or "Connection reset by peer" in text)


def rerun_hint(saved_step: int) -> str:
    """What rerunning the same command does, said by every message of a run that stopped early."""
    if saved_step:
        return f"rerun the same command to resume from step {saved_step}"
    return "nothing was saved yet; rerun the same command to start again"


def peer_gone(name: str, rank: int, step: int, saved_step: int) -> CollectiveTimeout:
    return CollectiveTimeout(f"{name}: process {rank} lost another process of the launch at step {step} (it ended or was "
                             f"killed: its own output says why); {rerun_hint(saved_step)}")


def timed_out(name: str, rank: int, timeout_s: float, step: int, saved_step: int) -> CollectiveTimeout:
    return CollectiveTimeout(
        f"{name}: process {rank} waited train.collective_timeout={timeout_s:g} s at step {step} for another process of the "
        f"launch and gave up: one of them stalled or died (its log says which; a stopped or swapping process, a hung "
        f"file system); {rerun_hint(saved_step)}")


class StallWatch:
    """Says, on its own thread, that this process has finished no step for `after` seconds (or ten
    times its slowest step; then at twice, four times as long); `touch()` at each step. Inside
    `during(what)` (validation: long, and not a step) it speaks only after half the timeout, naming
    what it is doing. A checkpoint is part of its step: a wait at its barrier is a wait for a peer."""

    def __init__(self, name: str, rank: int, timeout_s: float, say: Callable[[str], Any], after: float | None = None):
        self.name, self.rank, self.timeout_s, self.say = name, rank, timeout_s, say
        self.after = after if after is not None else min(120.0, timeout_s / 4)
        self.step = 0
        self._last = time.monotonic()
        self._slowest = 0.0
        self._doing: str | None = None
        self._told = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="afdcd-stall-watch", daemon=True)

    def __enter__(self) -> "StallWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def touch(self, step: int) -> None:
        now = time.monotonic()
        self._slowest = max(self._slowest, now - self._last)
        self.step, self._last, self._told = step, now, 0

    @contextlib.contextmanager
    def during(self, what: str) -> Iterator[None]:
        self._doing, self._last, self._told = what, time.monotonic(), 0
        try:
            yield
        finally:
            self._doing, self._last, self._told = None, time.monotonic(), 0

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.after / 4)):
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Say what is due at `now` (the watch's thread calls it; a test may with times of its own)."""
        waited, doing = now - self._last, self._doing
        # a run whose steps are slow is not stalled; said before giving up in any case
        limit = self.timeout_s / 2 if doing else min(max(self.after, 10 * self._slowest), self.timeout_s / 2)
        if waited < limit * 2 ** self._told:  # then at twice, four times as long...
            return
        self._told += 1
        gives_up = f"it gives up after train.collective_timeout={self.timeout_s:g} s"
        if doing:
            self.say(f"afdcd-bench: {self.name}: process {self.rank} has been in {doing} for {waited:.0f} s (after step "
                     f"{self.step}): if another process of the launch stalled, this one waits for it at a collective; "
                     f"{gives_up}")
        else:
            self.say(f"afdcd-bench: {self.name}: process {self.rank} has finished no step for {waited:.0f} s (after step "
                     f"{self.step}; the slowest step so far took {self._slowest:.1f} s): it is waiting for another process "
                     f"of the launch at a collective; {gives_up}")
