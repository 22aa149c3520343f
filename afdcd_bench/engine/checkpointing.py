"""Training state on disk: written to a temporary folder, marked complete, then swapped in.

A crash mid-write leaves either the previous state or an unmarked temporary folder, never a
state folder that looks complete but is not.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from accelerate import Accelerator

MARKER = "COMPLETE"
HASHES = "sha256.json"  # every file of the state, as saved: a resume reads only what was written


def state_dir(run_dir: Path) -> Path:
    return run_dir / "state"


def latest_state(run_dir: Path) -> Path | None:
    for cand in (state_dir(run_dir), run_dir / "state.old"):
        if (cand / MARKER).is_file():
            return cand
    return None


class DiskFull(OSError):
    """The training state did not fit on the disk: the previous state is kept, the partial one removed."""


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.is_dir() else 0.0


def _is_disk_full(exc: BaseException) -> bool:
    import errno

    text = str(exc)
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "unexpected pos" in text


def save_training_state(accelerator: Accelerator, run_dir: Path, progress: dict[str, Any]) -> None:
    final = state_dir(run_dir)
    tmp, old = run_dir / "state.tmp", run_dir / "state.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as "unexpected pos ... inline_container.cc"
        if not _is_disk_full(exc):
            raise
        written = _folder_mb(tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # a partial state would keep the disk full on every rerun
        need = max(_folder_mb(final), written)
        free = shutil.disk_usage(run_dir).free / 2**20
        kept = f"the previous state {final} is kept (a rerun resumes from it)" if (final / MARKER).is_file() else \
            "no earlier state exists"
        raise DiskFull(f"disk full at {run_dir}: the training state needs about {need:.0f} MB, {free:.0f} MB are free; the "
                       f"partial {tmp} was removed and {kept}. Free some space (or set output_dir to another disk) and "
                       "rerun") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2))
        (tmp / HASHES).write_text(json.dumps(state_hashes(tmp), indent=1, sort_keys=True))
        (tmp / MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def state_hashes(path: Path) -> dict[str, str]:
    from ..models.weights import sha256_file

    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.name not in (HASHES, MARKER)}


def check_state(path: Path) -> None:
    """Refuse a saved state whose files are not those it was saved with (a state saved before the
    hashes were kept has none to check)."""
    from .provenance import CheckpointMismatch

    listed = path / HASHES
    if not listed.is_file():
        return
    want, got = json.loads(listed.read_text()), state_hashes(path)
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            now = "missing" if name not in got else f"sha256 {got[name]}"
            was = "no such file" if name not in want else want[name]
            raise CheckpointMismatch(
                f"the saved training state {path / name} is {now}, but {listed} recorded {was} when the state was saved: "
                "it changed since (damaged or edited), so resuming from it would not continue the run. Rerun with "
                "--no-resume to start over (the old folder is kept aside)")


def load_training_state(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    check_state(path)
    accelerator.load_state(str(path))
    return json.loads((path / "progress.json").read_text())


def resume_or_start(accelerator: Accelerator, state: Path | None, current: dict[str, Any],
                    fresh: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The run's progress: `fresh` for a new run, else the saved one (weights and optimiser states
    loaded into what Accelerate prepared). Returns it, with the current settings, and the step
    resumed from (None: a fresh start)."""
    progress = load_training_state(accelerator, state) if state is not None else fresh
    progress["settings"] = current
    return progress, (progress["step"] if state is not None else None)


class RunTimes:
    """A run's seconds over all its sessions, carried by the checkpoint: training (its steps only:
    forward, backward, update and drawing the batches), evaluation (its validations), and wall (every
    session, from its start, the rest included: checkpoints, the teacher's check, starting up)."""

    def __init__(self, progress: dict[str, Any]):
        self.wall_before = progress.get("wall_seconds", 0.0)  # earlier sessions, up to their last checkpoint
        self.t_start = self.t_train = time.perf_counter()
        self.saved_step = progress.get("step", 0)  # the step a rerun would resume from

    def start_training(self) -> None:
        self.t_train = time.perf_counter()

    @contextlib.contextmanager
    def evaluating(self, progress: dict[str, Any]) -> Iterator[None]:
        """Time spent here counts as evaluation, not training: `train_seconds` is what a budget of
        equal compute equalises and what images per second divides by (docs/equal_compute.md)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - t0
            self.t_train += spent
            progress["eval_seconds"] = progress.get("eval_seconds", 0.0) + spent

    def checkpoint(self, accelerator: Accelerator, run_dir: Path, progress: dict[str, Any], step: int,
                   after: Callable[[int], None] | None = None) -> None:
        """Save the training state at `step` with the times so far; then call `after(step)`."""
        now = time.perf_counter()
        progress["step"] = step
        progress["train_seconds"] += now - self.t_train
        progress["wall_seconds"] = self.wall_before + (now - self.t_start)
        save_training_state(accelerator, run_dir, progress)
        self.t_train = time.perf_counter()  # saving is not training
        self.saved_step = step
        if after is not None:
            after(step)

    def session(self) -> float:
        return time.perf_counter() - self.t_start
