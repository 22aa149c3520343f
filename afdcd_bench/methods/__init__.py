"""Distillation methods: each pairs losses with the network outputs they need.

The training loop knows only this interface: a Method is an nn.Module (its own trainable
parts, such as the Af-DCD projector, are its parameters) whose forward returns the weighted
loss terms of one step. New methods register with @register("name").
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..config.schema import MethodConfig
from ..losses import AfDCDLoss, kd_loss, task_loss
from ..models import SegmentorOutput

METHODS: dict[str, type["Method"]] = {}


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def deco(cls: type["Method"]) -> type["Method"]:
        METHODS[name] = cls
        cls.name = name
        return cls

    return deco


class Method(nn.Module):
    name = "method"
    needs_teacher = True

    def __init__(self, cfg: MethodConfig, student_channels: int, teacher_channels: int | None):
        super().__init__()
        self.cfg = cfg

    def clip_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradient norm is clipped at cfg.clip_grad_norm."""
        return []

    def forward(self, student: SegmentorOutput, teacher: SegmentorOutput | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"task": task_loss(student.logits, labels, student.aux_logits, self.cfg.aux_weight)}


@register("baseline")
class Baseline(Method):
    """Individually trained student: task loss only, no teacher."""

    needs_teacher = False


@register("kd")
class LogitKD(Method):
    def forward(self, student, teacher, labels):
        terms = super().forward(student, teacher, labels)
        terms["kd"] = self.cfg.lambda_kd * kd_loss(student.logits, teacher.logits, self.cfg.temperature)
        return terms


@register("afdcd")
class AfDCD(Method):
    """Task + logit KD + lambda_fd * masked mimicking + lambda_ctr * dense contrast."""

    def __init__(self, cfg: MethodConfig, student_channels: int, teacher_channels: int | None):
        super().__init__(cfg, student_channels, teacher_channels)
        a = cfg.afdcd
        self.feature_loss = AfDCDLoss(
            student_channels, teacher_channels, mode=a.mode, groups=a.groups, patch=tuple(a.patch), pool=a.pool,
            tau=a.tau, distance=a.distance, mask=a.mask, mask_ratio=a.mask_ratio, projector=a.projector,
            backend=a.backend,
        )

    def clip_parameters(self):
        return list(self.feature_loss.parameters())

    def forward(self, student, teacher, labels):
        terms = super().forward(student, teacher, labels)
        if self.cfg.lambda_kd:
            terms["kd"] = self.cfg.lambda_kd * kd_loss(student.logits, teacher.logits, self.cfg.temperature)
        fd, ctr = self.feature_loss(student.features.float(), teacher.features.float())
        terms["fd"] = self.cfg.lambda_fd * fd
        terms["ctr"] = self.cfg.lambda_ctr * ctr
        return terms


def build_method(cfg: MethodConfig, student_channels: int, teacher_channels: int | None) -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; registered: {sorted(METHODS)}")
    cls = METHODS[cfg.name]
    if cls.needs_teacher and teacher_channels is None:
        raise ValueError(f"method {cfg.name!r} needs a teacher: set teacher.checkpoint (or teacher.recipe)")
    return cls(cfg, student_channels, teacher_channels)
