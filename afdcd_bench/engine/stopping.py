"""A run owns its stopping (docs/scale.md, "Preemption").

A scheduler that wants a run's resources back says so with a signal: SLURM sends SIGUSR1 before a
time limit (when the job asks with `--signal`), SIGTERM on `scontrol requeue`, preemption or
`scancel`; a local executor sends SIGTERM to stop a run. The run finishes the step it is in, saves
its training state at that step and stops with `TrainingPreempted`; the same command resumes it
exactly (the resume after a kill, without the steps since the last checkpoint being lost).
Every process stops at the same step: the flag is combined over processes each step.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, state saved; running the same command again resumes


class TrainingPreempted(RuntimeError):
    """The run saved its state at a step boundary on a stop signal; the message says how to resume."""


_early: list[int] = []  # stop signals that came before the loop (catch_early)


def catch_early() -> None:
    """From the command's first line: a stop signal that arrives while the run starts (imports, data,
    networks) is kept, and the loop stops after its first step, instead of the process dying unsaved.
    A parent that started this process with them blocked (harness/slurm.py) has them delivered now."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, frame: _early.append(signum))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def end_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel (Linux's parent-death signal) to send `sig` to this process when the process
    that started it dies, even by SIGKILL: a run started by an executor never outlives it. A parent
    already gone by now is taken as that signal."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), sig)


class StopRequests:
    """While entered, SIGTERM and SIGUSR1 set a flag instead of ending the process; the loop asks
    `requested()` after each optimiser step. Ctrl-C (SIGINT) does the same the first time, so the
    steps run so far are saved; a second Ctrl-C stops at once (KeyboardInterrupt, nothing saved since
    the last checkpoint). The previous handlers come back on exit. Outside the main thread (where
    Python cannot take signals) it installs nothing and never asks to stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._interrupts = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if _early:
            self.signal = _early[0]
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum

    def _interrupt(self, signum: int, frame: Any) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            raise KeyboardInterrupt
        self._note(signum, frame)
        import sys

        sys.stderr.write("\nafdcd-bench: Ctrl-C: stopping after this step and saving it (Ctrl-C again stops at once, "
                         "losing the steps since the last checkpoint)\n")
        sys.stderr.flush()

    def requested(self, accelerator: Any) -> bool:
        """True on every process once any process was signalled (a max over processes: they stop together)."""
        import torch

        flag = torch.tensor(0.0 if self.signal is None else 1.0, device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="max")
        return bool(flag.item() > 0)

    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "another process's signal"


def preempted(name: str, step: int, by: str) -> TrainingPreempted:
    return TrainingPreempted(f"{name} stopped by {by} at step {step}, its state saved; rerun the same command to resume from step {step}")


def stop_if_requested(stops: StopRequests, accelerator: Any, times: Any, run_dir: Any, progress: dict[str, Any], step: int,
                      name: str, after_checkpoint: Any = None) -> None:
    """At a step boundary: when a stop was asked for, save the state at this step (unless this step's
    checkpoint was just written) and raise TrainingPreempted on every process."""
    if not stops.requested(accelerator):
        return
    if times.saved_step != step:
        times.checkpoint(accelerator, run_dir, progress, step, after_checkpoint)
    raise preempted(name, step, stops.name())
