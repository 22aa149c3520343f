"""The step loop both training loops run: the student's (trainer.py) and a teacher-side stage's
(stage.py).

Once here for both: the poly lr of each step, gradient accumulation, the finite-loss check, the
update, the progress bar and heartbeat, the loss lines, the checkpoint interval, a stop signal
(save at the step, exit 75: stopping.py) and Ctrl-C (the message says from which step a rerun
resumes). What differs between the loops comes in as callables: the forward of a micro-batch, the
update of parts with their own optimiser, what happens at a log line and at a validation step.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator

from ..console import say
from .checkpointing import RunTimes
from .collectives import StallWatch, is_collective_timeout, is_peer_gone, peer_gone, rerun_hint, timed_out
from .progress import Heartbeat, make_progress
from .schedule import poly_lr
from .stepping import backward_and_step, check_finite
from .stopping import StopRequests, TrainingPreempted, stop_if_requested


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says from which step the same command resumes."""


@dataclass
class TrainHooks:
    """Points where a caller (tests, a sweep) may step into the loop without patching it."""

    adapt_student: Callable[[nn.Module], nn.Module] | None = None  # right after the student is built
    after_checkpoint: Callable[[int], None] | None = None  # after each saved training state (the step)
    before_update: Callable[[int], None] | None = None  # before each backward and optimiser step (micro-batch count)


def interrupted(name: str, step: int, saved_step: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"{name} interrupted at step {step}; {rerun_hint(saved_step)}")


def resumed_batches(accelerator: Accelerator, dataset: Any, loader: Any, micro: int) -> Iterator[Any]:
    """The loader's batches from micro-batch `micro` on, epoch after epoch: each epoch's shuffle and
    augmentation seeded by its number, so a resumed run skips exactly what it had consumed."""
    while True:
        epoch, skip = divmod(micro, len(loader))
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        for batch in (accelerator.skip_first_batches(loader, skip) if skip else loader):
            micro += 1
            yield batch


def timed_batches(batches: Iterator[Any], progress: dict[str, Any]) -> Iterator[Any]:
    """The batches, the seconds spent waiting for each added to progress["data_wait_seconds"] (saved
    with every checkpoint, so a resumed run's record counts its earlier sessions too)."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        progress["data_wait_seconds"] = progress.get("data_wait_seconds", 0.0) + time.perf_counter() - t0
        yield batch


def note_trained(progress: dict[str, Any], names: Any) -> None:
    """Add the names of terms that trained to the run's progress, saved with every checkpoint, so a
    resumed run's record lists those of its earlier sessions too."""
    seen = progress.setdefault("trained_terms", [])
    if any(n not in seen for n in names):
        progress["trained_terms"] = sorted({*seen, *names})


RATIO_STEPS = 20  # the first steps over which the record gives each term's size against the task loss


def note_first_terms(progress: dict[str, Any], accelerator: Accelerator, terms: dict[str, torch.Tensor], step: int,
                     updated: bool) -> None:
    """Sum each term (mean over processes) over the run's first RATIO_STEPS steps, into the progress
    saved with every checkpoint: a weight tuned elsewhere (FitNet's, on another layer) shows here
    as a term far larger or smaller than the task loss (docs/runs.md, "term_ratios")."""
    if step >= RATIO_STEPS or "task" not in terms:
        return
    names = sorted(terms)
    values = accelerator.reduce(torch.stack([terms[n].detach().float() for n in names]), reduction="mean")
    first = progress.setdefault("first_terms", {"steps": 0, "sums": {}})
    for n, v in zip(names, values.tolist()):
        first["sums"][n] = first["sums"].get(n, 0.0) + v
    first["steps"] += int(updated)
    progress["first_micro"] = progress.get("first_micro", 0) + 1  # the sums are over micro-batches


def note_loss_trend(progress: dict[str, Any], total: float) -> None:
    """A moving average of the loss (about the last 20 steps), saved with every checkpoint: the record
    compares it with the first steps' mean (loss_trend) and the run says so when the loss rose."""
    ema = progress.get("loss_ema")
    progress["loss_ema"] = total if ema is None else 0.9 * ema + 0.1 * total


def loss_trend(progress: dict[str, Any]) -> dict[str, float] | None:
    """{"first": mean loss of the first steps, "last": the moving average at the end}: a "last" far
    above "first" is a run that did not train (lr too high, a weight too large)."""
    first = progress.get("first_terms")
    if not first or not first["steps"] or progress.get("loss_ema") is None:
        return None
    micro = max(1, progress.get("first_micro", first["steps"]))
    return {"first": sum(first["sums"].values()) / micro, "last": progress["loss_ema"]}


def term_ratios(progress: dict[str, Any]) -> dict[str, Any] | None:
    """Each method term's sum over the first steps divided by the task loss's (None: no task loss)."""
    first = progress.get("first_terms")
    if not first or not first["sums"].get("task"):
        return None
    task = first["sums"]["task"]
    return {"steps": first["steps"], "ratios": {k: v / task for k, v in sorted(first["sums"].items()) if k != "task"}}


Forward = Callable[[dict[str, Any]], dict[str, torch.Tensor]]


class StepLoop:
    """A run's loop from its saved step to its last; enter it (progress display and stop signals)
    before logging or evaluating under it, then `run` it once."""

    def __init__(self, name: str, tc: Any, accelerator: Accelerator, run_dir: Path, progress_state: dict[str, Any],
                 hooks: TrainHooks, show_progress: bool):
        self.name, self.tc, self.accelerator, self.run_dir = name, tc, accelerator, run_dir
        self.state, self.hooks = progress_state, hooks
        self.times = RunTimes(progress_state)
        show = show_progress and accelerator.is_main_process
        self.progress = make_progress(show)
        self.bar = self.progress if show else None  # for evaluations shown under the loop's display
        shown: Callable[..., Any] = self.progress.console.log if show else (lambda *a, **k: None)
        self._file = None
        if accelerator.is_main_process:  # the run's log lines also go to <run>/logs/train.log, with or without a terminal
            from rich.console import Console

            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / "logs" / "train.log", "a", encoding="utf-8")
            file_console = Console(file=self._file, width=160, no_color=True, log_path=False, force_terminal=False)

            def both(*args: Any, **kwargs: Any) -> None:
                shown(*args, **kwargs)
                file_console.log(*args, **kwargs)
                self._file.flush()

            self.log = both
        else:
            self.log = shown
        self.heartbeat = Heartbeat(name, tc.iterations, progress_state["step"], self.progress.console.print,
                                   show and not self.progress.console.is_terminal)
        self.stops = StopRequests()
        # several processes: say when this one waits for the others, on every process (its own stderr)
        self.watch = StallWatch(name, accelerator.process_index, tc.collective_timeout, self._say) \
            if accelerator.num_processes > 1 else None

    def _say(self, line: str) -> None:
        say(line)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def __enter__(self) -> "StepLoop":
        self.progress.__enter__()
        self.stops.__enter__()
        if self.watch is not None:
            self.watch.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.watch is not None:
            self.watch.__exit__(*exc)
        self.stops.__exit__(*exc)
        self.progress.__exit__(*exc)
        if self._file is not None:
            self._file.close()
            self._file = None
            self.log = self.progress.console.log if self.bar is not None else (lambda *a, **k: None)

    def checkpoint(self, step: int) -> None:
        self.times.checkpoint(self.accelerator, self.run_dir, self.state, step, self.hooks.after_checkpoint)

    def not_a_step(self, what: str) -> Any:
        """Long work between steps (validation), which the stall watch then does not take for a wait."""
        return self.watch.during(what) if self.watch is not None else contextlib.nullcontext()

    def run(self, dataset: Any, loader: Any, accum: int, model: nn.Module, optimizer: torch.optim.Optimizer,
            forward: Forward, clip_params: Sequence[nn.Parameter] = (), max_norm: float = 0.0,
            after_update: Callable[[], dict[str, float]] = dict,
            at_log: Callable[[int, dict[str, float]], None] | None = None,
            validate: Callable[[int, float], None] | None = None) -> tuple[int, dict[str, float]]:
        """Train from the saved step to the last; returns that step and the last micro-batch's terms.
        `after_update` runs after each optimiser step (parts with their own optimiser) and returns
        their terms; `validate(step, lr)` runs at each validation step."""
        tc, accelerator, state = self.tc, self.accelerator, self.state
        step = state["step"]
        task = self.progress.add_task(self.name, total=tc.iterations, completed=step, info="")
        micro = step * accum
        self.times.start_training()
        last: dict[str, float] = {}
        try:
            if step >= tc.iterations:
                return step, last
            for batch in timed_batches(resumed_batches(accelerator, dataset, loader, micro), state):
                lr = poly_lr(tc.lr, step, tc.iterations, tc.poly_power, tc.lr_floor)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if self.hooks.before_update is not None:
                    self.hooks.before_update(micro)
                with accelerator.accumulate(model):
                    terms = forward(batch)
                    loss = sum(terms.values())
                    check_finite(accelerator, loss, terms, self.name, step, self.run_dir)
                    backward_and_step(accelerator, loss, optimizer, clip_params, max_norm)
                micro += 1
                note_first_terms(state, accelerator, terms, step, accelerator.sync_gradients)
                last = {k: float(v.detach()) for k, v in terms.items()}
                note_trained(state, last)
                if not accelerator.sync_gradients:
                    continue
                own_terms = after_update()
                note_trained(state, own_terms)
                step += 1
                if self.watch is not None:
                    self.watch.touch(step)
                note_loss_trend(state, sum(last.values()))
                self.progress.update(task, advance=1, info=f"loss {sum(last.values()):.3f} lr {lr:.2e}")
                self.heartbeat.step(step, f"loss {sum(last.values()):.3f}")
                if step % tc.log_interval == 0 or step == tc.iterations:
                    shown = {**last, **own_terms}
                    accelerator.log({**{f"train/{k}": v for k, v in shown.items()}, "train/lr": lr}, step=step)
                    self.log(f"step {step}/{tc.iterations} " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
                    if at_log is not None:
                        at_log(step, shown)
                if validate is not None and (step % tc.val_interval == 0 or step == tc.iterations):
                    with self.not_a_step("validation"), self.times.evaluating(state):
                        validate(step, lr)
                if step % tc.checkpoint_interval == 0 or step == tc.iterations:
                    self.checkpoint(step)
                if step >= tc.iterations:
                    break
                try:
                    stop_if_requested(self.stops, accelerator, self.times, self.run_dir, state, step, self.name,
                                      self.hooks.after_checkpoint)
                except TrainingPreempted as exc:  # in the run's own log too: stderr may go through a launcher that is gone
                    self.log(str(exc))
                    raise
        except KeyboardInterrupt:
            raise interrupted(self.name, step, self.times.saved_step) from None
        except RuntimeError as exc:
            rank, saved = accelerator.process_index, self.times.saved_step
            if is_collective_timeout(exc):
                raise timed_out(self.name, rank, tc.collective_timeout, step, saved) from None
            if is_peer_gone(exc) and accelerator.num_processes > 1:
                raise peer_gone(self.name, rank, step, saved) from None
            raise
        return step, last
