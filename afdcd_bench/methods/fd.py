"""Af-DCD's masked feature mimicking alone, to add to any other method ("cwd+kd+adv+fd")."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.checks import fraction
from ..losses import AfDCDLoss
from .base import Component, check_option_ranges, register


@dataclass
class FDOptions:
    weight: float = 2e-6  # Af-DCD's lambda_fd on Cityscapes
    mask: str = "random"
    mask_ratio: float = 0.75
    projector: str = "basic"


@register("fd")
class MaskedMimicking(Component):
    Options = FDOptions
    reads = ("features",)
    terms = ("fd",)

    def __init__(self, options: FDOptions, ctx):
        super().__init__(options, ctx)
        # mode "spatial" only skips the channel-group check: the contrastive part is never run here
        self.feature_loss = AfDCDLoss(ctx.student["features"], ctx.teacher["features"], mode="spatial",
                                      mask=options.mask, mask_ratio=options.mask_ratio, projector=options.projector)

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        fraction(options.mask_ratio, f"{path}.mask_ratio")

    def weights(self):
        return {"fd": self.options.weight}

    def clip_parameters(self):
        return list(self.feature_loss.parameters())

    def forward(self, student, teacher, labels):
        fd, _ = self.feature_loss.mimic(student.features.float(), teacher.features.float())
        return {"fd": self.options.weight * fd}
