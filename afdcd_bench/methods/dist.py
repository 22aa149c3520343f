"""DIST: inter- and intra-class correlation of the class probabilities, on the logits and aux logits."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import dist_loss
from .base import Component, register


@dataclass
class DISTOptions:
    weight: float = 1.0
    beta: float = 1.0  # inter-class (per pixel, across classes)
    gamma: float = 1.0  # intra-class (per class, across the batch's pixels)
    aux_weight: float = 0.4  # on the aux logits against the teacher's, where both networks have them


@register("dist")
class DIST(Component):
    Options = DISTOptions
    reads = ("logits",)
    terms = ("dist", "dist_aux")

    def weights(self):
        o = self.options
        aux = self.ctx.student.get("aux_logits") and self.ctx.teacher.get("aux_logits")
        return {"dist": o.weight, **({"dist_aux": o.weight * o.aux_weight} if aux and o.aux_weight else {})}

    def forward(self, student, teacher, labels):
        o = self.options
        terms = {"dist": o.weight * dist_loss(student.logits, teacher.logits, o.beta, o.gamma)}
        if o.aux_weight and student.aux_logits is not None and teacher.aux_logits is not None:
            terms["dist_aux"] = o.weight * o.aux_weight * dist_loss(student.aux_logits, teacher.aux_logits, o.beta, o.gamma)
        return terms
