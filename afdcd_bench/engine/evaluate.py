"""Validation over a (sharded) loader: every image counted once, matrices summed across processes."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..config.schema import EvalConfig
from ..data.batches import model_inputs
from ..metrics import SegmentationMetric
from .inference import predict


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    accelerator: Accelerator,
    cfg: EvalConfig,
    progress: Any = None,
    on_batch: Callable[[list[str], torch.Tensor], None] | None = None,
    normalization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The loader must be prepared with even_batches=False so no image is repeated. normalization:
    the convention the model takes its input in; by default its own (build_args)."""
    if normalization is None:
        normalization = accelerator.unwrap_model(model).build_args["normalization"]
    was_training = model.training
    model.eval()
    metric = SegmentationMetric(num_classes, device=accelerator.device)
    task = progress.add_task("eval", total=len(loader), info="") if progress is not None else None
    with torch.no_grad(), accelerator.autocast():
        for batch in loader:
            images, labels = model_inputs(batch, normalization)
            pred = predict(model, images, cfg).argmax(1)
            metric.update(pred, labels)
            if on_batch is not None:
                on_batch(list(batch["name"]), pred)
            if task is not None:
                progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    metric.sync(lambda t: accelerator.reduce(t, reduction="sum"))
    model.train(was_training)
    out = metric.compute()
    if cfg.all_slots:
        out["miou_present"], out["miou"] = out["miou"], out["miou_all_slots"]
    return out
