"""Segmentation scores from a confusion matrix kept on the device and summed across processes."""
from __future__ import annotations

from typing import Any, Callable

import torch


class SegmentationMetric:
    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer maps of the same shape; rows of the matrix are the truth."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred = pred.reshape(-1).to(self.confusion.device, torch.int64)
        target = target.reshape(-1).to(self.confusion.device, torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.max()) >= self.num_classes or int(target.min()) < 0):
            raise ValueError(f"target holds class ids outside 0..{self.num_classes - 1} (and ignore {self.ignore_index})")
        if pred.numel() and (int(pred.max()) >= self.num_classes or int(pred.min()) < 0):
            raise ValueError(f"prediction holds class ids outside 0..{self.num_classes - 1}")
        idx = target * self.num_classes + pred
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def sync(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the matrices of all processes, e.g. sync(lambda t: accelerator.reduce(t, 'sum'))."""
        self.confusion = reduce(self.confusion)

    def compute(self) -> dict[str, Any]:
        """mIoU over classes present (in truth or prediction) and over every label slot."""
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        total = cm.sum()
        return {
            "miou": float(iou[present].mean()) if bool(present.any()) else float("nan"),
            "miou_all_slots": float(torch.nan_to_num(iou, nan=0.0).mean()),
            "iou": [float(v) for v in iou],
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "pixels": int(total),
        }
