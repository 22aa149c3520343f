"""FitNet on C4: the canonical feature KD of the equal-compute comparison (docs/distillers.md, "FitNet").

The student's last backbone stage goes through a 1x1 conv without bias (no BN, no ReLU, torch's
default initialisation) to the teacher's C4 channels and is regressed onto the teacher's map: MSE
averaged over elements, weight 10. The loss and adapter follow the CIRKD release's FitNet, moved
from the head feature to C4; its weight was tuned on the head feature, so the run records each
term's ratio to the task loss over its first steps. `fitnet+kd` is the canonical logit + feature KD.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..losses import fitnet_loss
from .base import Component, register


@dataclass
class FitNetOptions:
    weight: float = 10.0


@register("fitnet")
class FitNet(Component):
    Options = FitNetOptions
    reads = ("features",)
    terms = ("fitnet",)

    def __init__(self, options: FitNetOptions, ctx):
        super().__init__(options, ctx)
        # trained with the student (its optimiser, schedule and weight decay); dropped at test time
        self.adapter = nn.Conv2d(ctx.student["features"], ctx.teacher["features"], 1, bias=False)

    def weights(self):
        return {"fitnet": self.options.weight}

    def forward(self, student, teacher, labels):
        if not self.options.weight:
            return {}
        return {"fitnet": self.options.weight * fitnet_loss(self.adapter(student.features), teacher.features)}
