"""Logit KD (Hinton et al.): per-pixel KL at temperature T; SKD's pixel-wise term."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import kd_loss
from .base import Component, register


@dataclass
class KDOptions:
    weight: float = 1.0  # lambda_kd of the released scripts
    temperature: float = 1.0


@register("kd")
class LogitKD(Component):
    Options = KDOptions
    reads = ("logits",)
    terms = ("kd",)

    def weights(self):
        return {"kd": self.options.weight}

    def forward(self, student, teacher, labels):
        return {"kd": self.options.weight * kd_loss(student.logits, teacher.logits, self.options.temperature)}
