"""One training step's pieces: the inputs' layout, the frozen teacher's forward, the finite-loss
check, and the optimiser update (backward, the method's partial gradient clip, step) for DDP and
DeepSpeed alike. The loop around them is engine/loop.py.

Why a module of its own: under DeepSpeed, `accelerator.backward` also runs the engine's step, so
there is no moment to clip the Af-DCD projector alone, and `accelerator.clip_grad_norm_` only
reports DeepSpeed's global norm. Here the engine's backward and step are called separately and
the projector's gradient is clipped in between on the engine's reduced (partitioned) gradients.

DeepSpeed (0.19) also clips the whole model at 1.0 unless its config says otherwise, and
Accelerate drops a `gradient_clipping: 0.0` it is given; the paper clips nothing globally, so
`disable_global_clip` writes the 0 into the engine's config itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..models import SegmentorOutput


class TrainingDiverged(RuntimeError):
    pass


def input_layout(images: torch.Tensor, tc: Any) -> torch.Tensor:
    """A batch in the memory layout the networks were given (building.speed_layout)."""
    return images.contiguous(memory_format=torch.channels_last) if tc.channels_last else images


def teacher_forward(teacher: nn.Module, images: torch.Tensor, tc: Any, autocast: Any) -> SegmentorOutput:
    """The frozen teacher's outputs, under no_grad or (train.teacher_inference_mode) inference_mode.
    Inference tensors may not be saved for a backward pass; no loss here saves the teacher's outputs
    as they are (each detaches, casts or normalises them first), but a new method might: they are
    copied out as plain tensors (a few maps, against a whole forward)."""
    if not tc.teacher_inference_mode:
        with torch.no_grad(), autocast():
            return teacher(images)
    with torch.inference_mode(), autocast():
        out = teacher(images)
    return SegmentorOutput(*(t.clone() if isinstance(t, torch.Tensor) else t for t in out))


def check_finite(accelerator: Accelerator, loss: torch.Tensor, terms: dict[str, torch.Tensor], name: str, step: int,
                 run_dir: Path) -> None:
    """Stop every process, before any update, when the loss of any one is not finite (one process
    raising alone would leave the others waiting at the next collective)."""
    finite = torch.isfinite(loss.detach()).float()
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="min")
    if finite.item() < 1:
        state = run_dir / "state"
        kept = (f"the last good checkpoint in {state} is intact (rerunning resumes from it)" if state.is_dir() else
                "no checkpoint was saved before it (the run starts over when rerun)")
        raise TrainingDiverged(
            f"{name}: loss became {loss.detach().item()} at step {step} ({ {k: float(v.detach()) for k, v in terms.items()} }); "
            f"stopped without saving; {kept}. A lower train.lr or a smaller weight of the term that grew usually helps."
        )


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def disable_global_clip(accelerator: Accelerator) -> float:
    """Before `prepare`: make DeepSpeed's global clip 0 unless the launch config set a positive one.

    Returns the global clip that will apply (0.0: none), for the run record.
    """
    if not uses_deepspeed(accelerator):
        return 0.0
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    value = ds_config.get("gradient_clipping", "auto")
    if value == "auto" or value is None or float(value) <= 0:
        ds_config["gradient_clipping"] = 0.0
        return 0.0
    return float(value)


def check_deepspeed_clip(accelerator: Accelerator, clip_params: Sequence[nn.Parameter], max_norm: float) -> None:
    """Refuse what the partial clip cannot do right: under DeepSpeed fp16 the gradients it reads
    before the step are still multiplied by the loss scale."""
    if uses_deepspeed(accelerator) and clip_params and max_norm > 0 and accelerator.mixed_precision == "fp16":
        raise ValueError(
            "DeepSpeed with fp16 cannot clip the Af-DCD projector alone (its gradients are loss-scaled "
            "until the engine's step): use mixed_precision bf16 or no, or method.clip_grad_norm=0"
        )


def check_own_parts(accelerator: Accelerator, method_name: str, own_parts: Sequence[str]) -> None:
    """Parts with their own optimiser live outside the engine: refuse them under DeepSpeed rather
    than train them unpartitioned beside a ZeRO engine nobody tested them with."""
    if uses_deepspeed(accelerator) and own_parts:
        raise ValueError(f"method {method_name!r} trains {', '.join(own_parts)} with its own optimizer, which this "
                         "harness does not run under DeepSpeed: launch it without a DeepSpeed config (plain DDP)")


def _clip_deepspeed(params: Sequence[nn.Parameter], max_norm: float) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

    grads = [safe_get_full_grad(p) for p in params]  # collective: every rank calls it for every param
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not pairs:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for _, g in pairs]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if coef < 1.0:
        for p, g in pairs:
            safe_set_full_grad(p, g * coef.to(g.dtype))
    return total


def backward_and_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    clip_params: Sequence[nn.Parameter],
    max_norm: float,
) -> None:
    """Call inside `accelerator.accumulate`; steps only at an accumulation boundary (the optimiser
    wrapper skips the others)."""
    clip = bool(clip_params) and max_norm > 0
    if uses_deepspeed(accelerator):
        engine = accelerator.deepspeed_engine_wrapped.engine
        engine.set_gradient_accumulation_boundary(is_boundary=accelerator.sync_gradients)
        engine.backward(loss)  # scales by the accumulation steps itself
        if accelerator.sync_gradients:
            if clip:
                _clip_deepspeed(list(clip_params), max_norm)
            engine.step()  # step and zero_grad
        return
    accelerator.backward(loss)
    if accelerator.sync_gradients and clip:
        accelerator.clip_grad_norm_(clip_params, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
