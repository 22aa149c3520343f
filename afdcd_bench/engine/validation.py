"""Validation during a student run: the val split's scores (and the test split's, where the recipe
reports on one), the history, and the best checkpoint, selected on val only (docs/method.md,
"Evaluation"). Everything kept lives in the run's progress, saved with each checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..models import Segmentor, save_segmentor
from .evaluate import evaluate


class Validation:
    def __init__(self, cfg: Any, accelerator: Accelerator, current_student: Callable[[], Segmentor], val_loader: DataLoader,
                 test_loader: DataLoader | None, progress_state: dict[str, Any], run_dir: Path,
                 log: Callable[..., Any], bar: Any):
        self.cfg, self.accelerator, self.current_student = cfg, accelerator, current_student
        self.val_loader, self.test_loader = val_loader, test_loader
        self.state, self.run_dir, self.log, self.bar = progress_state, run_dir, log, bar

    def scores(self, model: Any, loader: DataLoader) -> dict[str, Any]:
        return evaluate(model, loader, self.cfg.num_classes, self.accelerator, self.cfg.eval, self.bar)

    def __call__(self, step: int, lr: float) -> None:
        state, accelerator = self.state, self.accelerator
        current = self.current_student()
        scores = self.scores(current, self.val_loader)
        state["history"].append({"step": step, "miou": scores["miou"], "lr": lr})  # lr of this step's update
        tested = None
        if self.test_loader is not None:
            tested = self.scores(current, self.test_loader)
            state["test_history"].append({"step": step, "miou": tested["miou"], "lr": lr})
            state["final_test"] = tested
            accelerator.log({"test/miou": tested["miou"]}, step=step)
        if state["best_miou"] is None or scores["miou"] > state["best_miou"]:
            state["best_miou"], state["best_step"] = scores["miou"], step
            state["best_scores"] = scores
            state["test_at_best"] = tested
            if accelerator.is_main_process:
                save_segmentor(current, self.run_dir / "best.safetensors", {"step": step, "miou": scores["miou"]})
        state["final_scores"] = scores
        accelerator.log({"val/miou": scores["miou"], "val/pixel_acc": scores["pixel_acc"]}, step=step)
        on_test = f"; {self.cfg.data.test_split} mIoU {100 * tested['miou']:.2f}" if tested else ""
        self.log(f"step {step}: val mIoU {100 * scores['miou']:.2f} (best {100 * state['best_miou']:.2f} "
                 f"@ {state['best_step']}){on_test}")
