"""A teacher-side stage: parameters learnt on the frozen teacher alone, before any student (MasKD's
receptive tokens). Same launch, precision, accumulation, lr schedule, checkpoint/resume and run
record as a student run (the shared parts: building.py, loop.py); no student, no validation. Its output is
<run>/stage.safetensors, which the students' recipes name by the stage's recipe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file

from ..config import RecipeConfig, project_root
from ..config.runs import recorded_path
from ..data.batches import model_inputs
from ..files import atomic_write
from ..methods import METHODS
from .building import build_context, build_optimizer, load_teacher, speed_layout, training_data
from .checkpointing import resume_or_start
from .finished import close_run
from .identity import file_sha256
from .loop import StepLoop, TrainHooks
from .records import record_path, run_facts, write_record
from .stepping import input_layout, teacher_forward


def save_stage_weights(weights: dict[str, torch.Tensor], path: Path, facts: dict[str, Any]) -> Path:
    """Atomically, and the same bytes for the same weights: the students' records name the file by
    its sha256. safetensors writes a metadata dict of several keys in a different order from one
    save to the next (4 hashes in 6 saves of one tensor, measured), so the facts go in as one key."""
    metadata = {"stage": json.dumps(facts, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(weights, tmp, metadata=metadata))


def train_stage(cfg: RecipeConfig, accelerator: Accelerator, run_dir: Path, state: Path | None, current: dict[str, Any],
                per_device: int, accum: int, results_dir: Path | None, show_progress: bool,
                hooks: TrainHooks) -> dict[str, Any]:
    tc = cfg.train
    set_seed(tc.seed)
    (name,) = cfg.method.components
    cls = METHODS[name]
    teacher = load_teacher(cfg)
    stage = cls(cfg.method.options.get(name) or cls.Options(), build_context(cfg, accelerator, per_device, None, teacher))
    teacher_mode = getattr(stage.options, "teacher_mode", "eval")
    teacher = teacher.to(accelerator.device).requires_grad_(False).train(teacher_mode == "train")

    train_ds, loader = training_data(cfg, per_device, accelerator.num_processes, accelerator.device.type == "cuda")
    speed_layout(tc, teacher, stage)
    optimizer = build_optimizer([p for p in stage.parameters() if p.requires_grad], tc)
    wrapped, optimizer, loader = accelerator.prepare(stage, optimizer, loader)

    progress_state, resumed_from = resume_or_start(accelerator, state, current,
                                                   {"step": 0, "train_seconds": 0.0, "wall_seconds": 0.0, "history": []})

    def forward(batch: dict[str, Any]) -> dict[str, Any]:
        images, labels = model_inputs(batch, teacher.build_args["normalization"])
        teacher_out = teacher_forward(teacher, input_layout(images, tc), tc, accelerator.autocast)
        return wrapped(None, teacher_out, labels)

    def at_log(step: int, terms: dict[str, float]) -> None:
        progress_state["history"].append({"step": step, **terms})

    with StepLoop(cfg.name, tc, accelerator, run_dir, progress_state, hooks, show_progress) as loop:
        if state is not None:
            loop.log(f"resumed {cfg.name} from {state} at step {progress_state['step']}")
        loop.log(f"{cfg.name}: learning {name} on the frozen teacher (teacher in {teacher_mode} mode)")
        step, last = loop.run(train_ds, loader, accum, wrapped, optimizer, forward, at_log=at_log)
    output = run_dir / "stage.safetensors"
    if accelerator.is_main_process:
        weights = {k: v.detach().float().cpu().contiguous() for k, v in accelerator.unwrap_model(wrapped).state_dict().items()}
        save_stage_weights(weights, output, {"method": name, "recipe": cfg.name, "step": step})
    record = {
        **run_facts(cfg, accelerator, per_device, accum, progress_state, resumed_from, loop.times.wall_before,
                    loop.times.session()),
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
        record["record_path"] = str(write_record(record_path(results_dir, cfg.name, tc.seed), record))
    close_run(accelerator, run_dir, record, tc.keep_state)
    accelerator.end_training()
    return record
