"""Training one recipe: the launch (launching.py), the parts (building.py), the loop (loop.py) and
the run record. `_train` is the outline of a student run; a teacher-side stage is stage.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import RecipeConfig, budget_slug, project_root, run_dir as run_folder, settings, to_dict
from ..config.runs import recorded_path
from ..data.batches import model_inputs
from ..methods import stage_of
from ..models import save_segmentor
from .building import StudentRun, build_student_run, compile_counts
from .checkpointing import resume_or_start
from .evaluate import evaluate
from .feeding import loader_facts
from .finished import close_run, stored_record
from .identity import file_sha256, identity, input_files, input_paths, launch
from .launching import LaunchMismatch, flat_hparams, make_accelerator, prepare_run_folder, split_batch, trackers_of
from .provenance import check_inputs
from .loop import StepLoop, TrainHooks, TrainingInterrupted, loss_trend, term_ratios
from .records import record_path, run_facts, write_record
from .stage import train_stage
from .stepping import TrainingDiverged, input_layout, teacher_forward
from .validation import Validation

__all__ = ["LaunchMismatch", "TrainHooks", "TrainingDiverged", "TrainingInterrupted", "split_batch", "train"]


def train(
    cfg: RecipeConfig,
    results_dir: str | os.PathLike | None = None,
    per_device_batch: int | None = None,
    convert_sync_bn: Callable[[nn.Module], nn.Module] | None = None,
    resume: bool = True,
    show_progress: bool = True,
    hooks: TrainHooks | None = None,
) -> dict[str, Any]:
    """Train one recipe; returns (and writes to results_dir) its run record."""
    tc = cfg.train
    trackers = trackers_of(tc)
    run_dir = run_folder(cfg.output_dir, cfg.name, tc.seed, budget_slug(cfg.budget))
    accelerator, per_device, accum = make_accelerator(cfg, run_dir, per_device_batch, trackers)
    check_inputs(input_paths(cfg))  # a teacher or stage file changed since its run recorded it is refused here
    current = identity(settings(to_dict(cfg)), input_files(cfg), launch(accelerator.num_processes, per_device, accum))
    results = Path(results_dir) if results_dir is not None else None
    lock, aside, state, finished = prepare_run_folder(accelerator, cfg.name, run_dir, results, resume, current)
    try:
        if finished is not None:
            return _already_finished(cfg, accelerator, run_dir, finished, results)
        if stage_of(cfg.method.name):  # a teacher-side stage (MasKD's tokens): no student
            return train_stage(cfg, accelerator, run_dir, state, current, per_device, accum, results, show_progress,
                               hooks or TrainHooks())
        return _train(cfg, accelerator, run_dir, state, aside, current, trackers, per_device, accum, results,
                      convert_sync_bn, show_progress, hooks or TrainHooks())
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RecipeConfig, accelerator: Accelerator, run_dir: Path, state: Path | None, aside: Path | None,
           current: dict[str, Any], trackers: list[str], per_device: int, accum: int, results_dir: Path | None,
           convert_sync_bn: Callable[[nn.Module], nn.Module] | None, show_progress: bool, hooks: TrainHooks) -> dict[str, Any]:
    tc = cfg.train
    set_seed(tc.seed)
    if trackers:
        accelerator.init_trackers(cfg.name.replace("/", "__") + f"__seed{tc.seed}", config=flat_hparams(to_dict(cfg)))
    run = build_student_run(cfg, accelerator, per_device, hooks.adapt_student, convert_sync_bn)
    progress_state, resumed_from = resume_or_start(accelerator, state, current, {
        "step": 0, "best_miou": None, "best_step": None, "history": [], "train_seconds": 0.0, "eval_seconds": 0.0, "wall_seconds": 0.0,
        "teacher": None})
    progress_state.setdefault("test_history", [])

    def forward(batch: dict[str, Any]) -> dict[str, Any]:
        images, labels = model_inputs(batch, run.student.build_args["normalization"])
        images = input_layout(images, tc)
        teacher_out = teacher_forward(run.teacher, images, tc, accelerator.autocast) if run.teacher is not None else None
        return run.model(images, labels, teacher_out)

    with StepLoop(cfg.name, tc, accelerator, run_dir, progress_state, hooks, show_progress) as loop:
        _announce(loop, cfg, run_dir, aside, state, progress_state["step"], run.train_set.cache_note)
        if run.teacher is not None and progress_state["teacher"] is None and cfg.eval.teacher_check:
            with loop.not_a_step("the teacher's check"):
                progress_state["teacher"] = evaluate(run.teacher, run.val_loader, cfg.num_classes, accelerator, cfg.eval, loop.bar)
            loop.log(f"teacher mIoU {100 * progress_state['teacher']['miou']:.2f} (sanity check of the teacher checkpoint)")
        validation = Validation(cfg, accelerator, run.full_student.current, run.val_loader, run.test_loader, progress_state,
                                run_dir, loop.log, loop.bar)
        run.model.train()
        step, _ = loop.run(run.train_set, run.train_loader, accum, run.model, run.optimizer, forward, run.clip_params,
                           cfg.method.clip_grad_norm, after_update=run.method.after_step, validate=validation)
    session_wall = loop.times.session()

    final_student = run.full_student.current()  # a collective (rank 0's buffers to all): on every process
    if accelerator.is_main_process:
        save_segmentor(final_student, run_dir / "final.safetensors", {"step": step})
    record = _student_record(cfg, accelerator, run_dir, per_device, accum, progress_state, resumed_from,
                             loop.times.wall_before, session_wall, run, trackers)
    trend = record.get("loss_trend")
    if trend and trend["last"] > 2 * trend["first"] and accelerator.is_main_process:  # said even without a progress display
        print(f"afdcd-bench: warning: {cfg.name}'s loss ended at {trend['last']:.3f}, above twice its first steps' mean "
              f"({trend['first']:.3f}): it did not train (train.lr {tc.lr:g} too high, or a term's weight too large?); "
              "the record says so in loss_trend", file=sys.stderr)
    if accelerator.is_main_process and results_dir is not None:
        record["record_path"] = str(write_record(record_path(results_dir, cfg.name, tc.seed, budget_slug(cfg.budget)), record))
    close_run(accelerator, run_dir, record, tc.keep_state)
    accelerator.end_training()
    return record


def _already_finished(cfg: RecipeConfig, accelerator: Accelerator, run_dir: Path, finished: dict[str, Any],
                      results_dir: Path | None) -> dict[str, Any]:
    """A rerun of a run that finished in this folder under the same settings: its record, nothing trained."""
    record = stored_record(finished)
    if accelerator.is_main_process:
        print(f"afdcd-bench: {cfg.name} (seed {cfg.train.seed}) already finished in {run_dir} at step "
              f"{cfg.train.iterations}: its record is {run_dir / 'record.json'}; nothing to train "
              "(--no-resume trains it again, the old folder kept aside)", flush=True)
        if results_dir is not None:
            record["record_path"] = str(write_record(record_path(results_dir, cfg.name, cfg.train.seed, budget_slug(cfg.budget)),
                                                     record))
    accelerator.wait_for_everyone()
    return record


def _announce(loop: StepLoop, cfg: RecipeConfig, run_dir: Path, aside: Path | None, state: Path | None, step: int,
              data_note: str = "") -> None:
    if data_note:  # whether the decoded-pixel cache is read (data/cache.py)
        loop.log(data_note)
    if aside is not None:
        loop.log(f"--no-resume: the earlier run in {run_dir} was moved to {aside}")
    feed = loader_facts(cfg.data, loop.accelerator.device.type == "cuda")
    asked = cfg.data.num_workers
    loop.log(f"loader: {feed['workers']} worker(s) per process (data.num_workers={asked}; {feed['cores']} core(s) for this "
             f"process{', fewer than asked' if asked != 'auto' and feed['workers'] < asked else ''}), pinned memory "
             f"{'on' if feed['pin_memory'] else 'off'}{', workers kept between epochs' if feed.get('persistent_workers') else ''}")
    if state is not None:
        loop.log(f"resumed {cfg.name} from {state} at step {step}")


def trained_weights(weights: dict[str, float], trained: set[str]) -> dict[str, float | None]:
    """The record's method_terms: each term the run trained, with its weight (None: the method
    declared none), and the task's aux weight; a declared weight whose term never ran is left out."""
    out: dict[str, float | None] = {k: weights.get(k) for k in sorted(trained)}
    if "task" in trained and weights.get("task_aux"):
        out["task_aux"] = weights["task_aux"]
    return out


def _student_record(cfg: RecipeConfig, accelerator: Accelerator, run_dir: Path, per_device: int, accum: int,
                    progress_state: dict[str, Any], resumed_from: int | None, wall_before: float, session_wall: float,
                    run: StudentRun, trackers: list[str]) -> dict[str, Any]:
    method, teacher, compiled = run.method, run.teacher, run.compiled
    final = progress_state.get("final_scores") or {}
    best = progress_state.get("best_scores") or {}
    record = {
        **run_facts(cfg, accelerator, per_device, accum, progress_state, resumed_from, wall_before, session_wall),
        "method_terms": trained_weights(method.weights(), set(progress_state.get("trained_terms", []))),
        "term_ratios": term_ratios(progress_state),  # each term against the task loss over the first steps
        "loss_trend": loss_trend(progress_state),  # the first steps' mean loss and the last steps' moving average
        "method_parameters": sum(p.numel() for p in method.parameters() if p.requires_grad),  # trained with the student
        "own_parts": {k: sum(p.numel() for p in part.module.parameters()) for k, part in run.own_parts.items()},
        "method_state_bytes": method.state_bytes(),  # state beyond trained weights (CIRKD's queues), per method
        "student": f"{cfg.student.arch}-{cfg.student.backbone}",
        "teacher": f"{teacher.build_args['arch']}-{teacher.build_args['backbone']}" if teacher is not None else None,
        "teacher_checkpoint": recorded_path(cfg.teacher.checkpoint, project_root()) if teacher is not None else None,
        "global_grad_clip": run.global_clip,
        "trackers": trackers,
        "compile": compile_counts(compiled) if compiled else None,
        "final_miou": final.get("miou"),
        "best_miou": progress_state.get("best_miou"),
        "best_step": progress_state.get("best_step"),
        "final_iou": final.get("iou"),
        "best_iou": best.get("iou"),
        "final_pixel_acc": final.get("pixel_acc"),
        "history": progress_state["history"],
        # with data.test_split: scores of that split; the selected checkpoint is still chosen on val_split
        "test_split": cfg.data.test_split,
        "test_miou_at_best": (progress_state.get("test_at_best") or {}).get("miou"),
        "final_test_miou": (progress_state.get("final_test") or {}).get("miou"),
        "best_test_miou": max((h["miou"] for h in progress_state["test_history"]), default=None),
        "test_history": progress_state["test_history"],
        "teacher_miou": (progress_state["teacher"] or {}).get("miou"),
        "published_miou": cfg.published.miou,
        "checkpoint": recorded_path(run_dir / "final.safetensors", project_root()),  # config/runs.py
        "best_checkpoint": recorded_path(run_dir / "best.safetensors", project_root()),
    }
    if accelerator.is_main_process:  # what the scores are of: a later run in the same folder is told apart (plots, eval)
        record["checkpoint_sha256"] = file_sha256(run_dir / "final.safetensors")
        best_file = run_dir / "best.safetensors"
        record["best_checkpoint_sha256"] = file_sha256(best_file) if best_file.is_file() else None
    return record
