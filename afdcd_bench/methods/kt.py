"""Knowledge Tailoring (KT, Pattern Recognition 2025) as released (docs/distillers.md, "KT").

Four terms beside the task loss: spatial CWD at T = 4 on the logits (and 0.4 x its weight on the aux
logits, so 0.4 x weight^2, as released), logit tailoring with the ground-truth masks (LT), feature
tailoring (FT) and a triplet term on the head feature, the last two switching direction a quarter
into the schedule (the release's iteration 10,000 of 40,000). The release never trains its
tailoring modules and anchor conv: they stay at their random initialisation, and so they do here
(kept with the run's state); `train_tailoring: true` trains them with the student, a variant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config.checks import fraction
from ..losses import cwd_loss
from ..losses.kt import Tailoring, kt_feature_terms, kt_logit_tailoring_loss
from .base import Component, check_option_ranges, register


@dataclass
class KTOptions:
    kd_weight: float = 1.0  # lambda_kd: CWD on the logits; the aux logits get aux_factor x kd_weight^2
    aux_factor: float = 0.4
    lt_weight: float = 1.0  # lambda_mask
    ft_weight: float = 1.0  # lambda_custom
    triplet_weight: float = 1.0  # lambda_contrastive
    temperature: float = 4.0  # every KT divergence (--kd-temperature)
    switch_fraction: float = 0.25  # FT and triplet tailor the teacher from this share of the iterations on
    train_tailoring: bool = False  # a variant: the release never trains the tailoring modules and anchor conv


@register("kt")
class KnowledgeTailoring(Component):
    Options = KTOptions
    reads = ("logits", "head")
    any_size = ("logits",)  # logit tailoring brings both to the labels' size
    terms = ("kt_kd", "kt_kd_aux", "kt_lt", "kt_ft", "kt_triplet")

    def __init__(self, options: KTOptions, ctx):
        super().__init__(options, ctx)
        cs, ct = ctx.student["head"], ctx.teacher["head"]
        # the released sizes: g_s = Tailoring(C_T, C_T / 2), g_t = Tailoring(C_S, C_S / 2), W_a: C_S -> C_T
        self.tailor_student = Tailoring(ct, max(1, ct // 2))
        self.tailor_teacher = Tailoring(cs, max(1, cs // 2))
        self.anchor = nn.Conv2d(cs, ct, 1, bias=False)
        for module in (self.tailor_student, self.tailor_teacher, self.anchor):
            module.requires_grad_(options.train_tailoring)
        # optimiser steps done: which side is tailored; a buffer, so a resumed run switches on time
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.switch_step = max(1, round(options.switch_fraction * ctx.iterations))

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        fraction(options.switch_fraction, f"{path}.switch_fraction")

    def weights(self):
        o = self.options
        aux = self.ctx.student.get("aux_logits") and self.ctx.teacher.get("aux_logits")
        return {"kt_kd": o.kd_weight, **({"kt_kd_aux": o.aux_factor * o.kd_weight ** 2} if aux else {}), "kt_lt": o.lt_weight,
                "kt_ft": o.ft_weight, "kt_triplet": o.triplet_weight}

    def student_tailored(self) -> bool:
        """The release tailors the student at iterations 1 .. switch - 1 (1-based), the teacher from the switch on."""
        return int(self.steps_done) + 1 < self.switch_step

    def after_step(self):
        self.steps_done += 1
        return {}

    def forward(self, student, teacher, labels):
        o, t = self.options, self.options.temperature
        terms = {}
        if o.kd_weight:
            terms["kt_kd"] = o.kd_weight * cwd_loss(student.logits, teacher.logits, t)
            if student.aux_logits is not None and teacher.aux_logits is not None:
                terms["kt_kd_aux"] = o.aux_factor * o.kd_weight ** 2 * cwd_loss(student.aux_logits, teacher.aux_logits, t)
        if o.lt_weight:
            terms["kt_lt"] = o.lt_weight * kt_logit_tailoring_loss(student.logits, teacher.logits, labels, self.ctx.num_classes, t,
                                                                   self.ctx.ignore_index)
        if o.ft_weight or o.triplet_weight:
            ft, tri = kt_feature_terms(student.head, teacher.head, self.student_tailored(), self.tailor_student,
                                       self.tailor_teacher, self.anchor, t)
            if o.ft_weight:
                terms["kt_ft"] = o.ft_weight * ft
            if o.triplet_weight:
                terms["kt_triplet"] = o.triplet_weight * tri
        return terms
