"""Channel-wise distillation (CWD) on the head feature (through a 1x1 align conv) and the logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..losses import cwd_loss
from .base import Component, register


@dataclass
class CWDOptions:
    # Per-channel mean normalisation (the paper's). The released script's feature weight 50 divides a
    # sum over the teacher's channels by the student's: recipes say what weight matches it.
    feature_weight: float = 50.0
    logit_weight: float = 3.0
    temperature: float = 4.0


@register("cwd")
class ChannelWise(Component):
    Options = CWDOptions
    reads = ("logits", "head")
    terms = ("cwd_feature", "cwd_logit")

    def __init__(self, options: CWDOptions, ctx):
        super().__init__(options, ctx)
        cs, ct = ctx.student["head"], ctx.teacher["head"]
        # trained with the student (its optimiser and weight decay), as released
        self.align = nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity()

    def weights(self):
        return {"cwd_feature": self.options.feature_weight, "cwd_logit": self.options.logit_weight}

    def forward(self, student, teacher, labels):
        o = self.options
        terms = {}
        if o.feature_weight:
            terms["cwd_feature"] = o.feature_weight * cwd_loss(self.align(student.head), teacher.head, o.temperature)
        if o.logit_weight:
            terms["cwd_logit"] = o.logit_weight * cwd_loss(student.logits, teacher.logits, o.temperature)
        return terms
