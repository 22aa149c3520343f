"""A teacher-side stage: parameters learnt on the frozen teacher alone, before any student (MasKD's
receptive tokens). Same launch, precision, accumulation, lr schedule, checkpoint/resume and run
record as a student run (engine/trainer.py); no student, no validation. Its output is
<run>/stage.safetensors, which the students' recipes name by the stage's recipe.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ..config import RecipeConfig, project_root
from ..config.runs import recorded_path
from ..data import build_dataset, resolve_root
from ..losses import IGNORE_INDEX
from ..methods import METHODS, BuildContext
from .checkpointing import RunTimes, load_training_state
from .progress import Heartbeat, make_progress
from .identity import file_sha256
from .schedule import poly_lr
from .records import record_path, run_facts, write_record
from .stepping import backward_and_step
from .stopping import StopRequests, stop_if_requested


def train_stage(cfg: RecipeConfig, accelerator: Accelerator, run_dir: Path, state: Path | None, current: dict[str, Any],
                per_device: int, accum: int, results_dir: str | os.PathLike | None, show_progress: bool,
                hooks: Any) -> dict[str, Any]:
    from .trainer import (build_optimizer, check_finite, input_layout, interrupted, load_teacher, loader_options,
                          loader_workers, resumed_batches, speed_layout, teacher_forward)

    tc = cfg.train
    set_seed(tc.seed)
    (name,) = cfg.method.components
    cls = METHODS[name]
    teacher = load_teacher(cfg)
    if teacher.num_classes != cfg.num_classes:
        raise ValueError(f"teacher predicts {teacher.num_classes} classes, the recipe {cfg.num_classes}")
    stage = cls(cfg.method.options.get(name) or cls.Options(), BuildContext(
        student={}, teacher=teacher.output_channels, num_classes=cfg.num_classes, ignore_index=IGNORE_INDEX,
        crop_size=tuple(cfg.data.crop_size), num_processes=accelerator.num_processes, device=accelerator.device,
        per_device_batch=per_device, seed=tc.seed))
    teacher_mode = getattr(stage.options, "teacher_mode", "eval")
    teacher = teacher.to(accelerator.device).requires_grad_(False).train(teacher_mode == "train")

    root = resolve_root(cfg.data.name, cfg.data.root)
    train_ds = build_dataset(cfg.data.name, root, "train", train=True, crop_size=tuple(cfg.data.crop_size),
                             scale_range=tuple(cfg.data.scale_range), normalization=teacher.build_args["normalization"],
                             seed=tc.seed, flip=cfg.data.flip, scale_step=cfg.data.scale_step)
    if len(train_ds) < per_device * accelerator.num_processes:
        raise ValueError(f"training set has {len(train_ds)} images, fewer than one global micro-batch")
    workers = loader_workers(cfg.data.num_workers)
    loader = DataLoader(train_ds, batch_size=per_device, shuffle=True, drop_last=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(tc.seed), **loader_options(cfg.data, workers))
    speed_layout(tc, teacher, stage)
    optimizer = build_optimizer([p for p in stage.parameters() if p.requires_grad], tc)
    wrapped, optimizer, loader = accelerator.prepare(stage, optimizer, loader)

    progress_state: dict[str, Any] = {"step": 0, "train_seconds": 0.0, "wall_seconds": 0.0, "history": []}
    if state is not None:
        progress_state = load_training_state(accelerator, state)
    progress_state["settings"] = current
    resumed_from = progress_state["step"] if state is not None else None
    times = RunTimes(progress_state)
    show = show_progress and accelerator.is_main_process
    progress = make_progress(show)
    log = progress.console.log if show else (lambda *a, **k: None)
    heartbeat = Heartbeat(cfg.name, tc.iterations, progress_state["step"], progress.console.print,
                          show and not progress.console.is_terminal)
    step = progress_state["step"]
    last: dict[str, float] = {}
    with progress, StopRequests() as stops:
        if state is not None:
            log(f"resumed {cfg.name} from {state} at step {step}")
        log(f"{cfg.name}: learning {name} on the frozen teacher (teacher in {teacher_mode} mode)")
        task = progress.add_task(cfg.name, total=tc.iterations, completed=step, info="")
        try:
            if step < tc.iterations:
                for batch in resumed_batches(accelerator, train_ds, loader, step * accum):
                    lr = poly_lr(tc.lr, step, tc.iterations, tc.poly_power, tc.lr_floor)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with accelerator.accumulate(wrapped):
                        images = input_layout(batch["image"], tc)
                        teacher_out = teacher_forward(teacher, images, tc, accelerator.autocast)
                        terms = wrapped(None, teacher_out, batch["label"])
                        loss = sum(terms.values())
                        check_finite(accelerator, loss, terms, cfg.name, step, run_dir)
                        backward_and_step(accelerator, loss, optimizer, [], 0.0)
                    last = {k: float(v.detach()) for k, v in terms.items()}
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    progress.update(task, advance=1, info=f"loss {sum(last.values()):.3f}")
                    heartbeat.step(step, f"loss {sum(last.values()):.3f}")
                    if step % tc.log_interval == 0 or step == tc.iterations:
                        progress_state["history"].append({"step": step, **last})
                        log(f"step {step}/{tc.iterations} " + " ".join(f"{k} {v:.4f}" for k, v in last.items()))
                    if step % tc.checkpoint_interval == 0 or step == tc.iterations:
                        times.checkpoint(accelerator, run_dir, progress_state, step, hooks.after_checkpoint)
                    if step >= tc.iterations:
                        break
                    stop_if_requested(stops, accelerator, times, run_dir, progress_state, step, cfg.name, hooks.after_checkpoint)
        except KeyboardInterrupt:
            raise interrupted(cfg.name, step, times.saved_step) from None
    output = run_dir / "stage.safetensors"
    if accelerator.is_main_process:
        weights = {k: v.detach().float().cpu().contiguous() for k, v in accelerator.unwrap_model(wrapped).state_dict().items()}
        save_file(weights, str(output), metadata={"method": name, "recipe": cfg.name, "step": str(step)})
    record = {
        **run_facts(cfg, accelerator, per_device, accum, progress_state, resumed_from, times.wall_before, times.session()),
        "stage_of": cls.stage_of,  # not a student: tables list it apart
        "student": "-",
        "teacher": f"{teacher.build_args['arch']}-{teacher.build_args['backbone']}",
        "teacher_checkpoint": recorded_path(cfg.teacher.checkpoint, project_root()),
        "teacher_mode": teacher_mode,
        "method_terms": stage.weights(),
        "method_parameters": sum(p.numel() for p in stage.parameters()),
        "final_terms": last,
        "loss_history": progress_state["history"],
        "final_miou": None,
        "best_miou": None,
        "published_miou": None,
        "stage_weights": recorded_path(output, project_root()),
    }
    if accelerator.is_main_process:
        record["stage_weights_sha256"] = file_sha256(output)
    if accelerator.is_main_process and results_dir is not None:
        record["record_path"] = str(write_record(record_path(Path(results_dir), cfg.name, tc.seed), record))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record
