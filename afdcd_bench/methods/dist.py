"""DIST: inter- and intra-class correlation of the class probabilities, on the logits and aux logits."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import dist_loss
from ..config.schema import ConfigError
from .base import Component, check_option_ranges, register


@dataclass
class DISTOptions:
    weight: float = 1.0
    beta: float = 1.0  # inter-class (per pixel, across classes)
    gamma: float = 1.0  # intra-class (per class, across the batch's pixels)
    aux_weight: float = 0.4  # on the aux logits against the teacher's, where both networks have them
    # intra-class correlation over the pixels of "global": every process's micro-batch (a run's result
    # does not depend on how many processes share the batch) or "device": each process's own, as released
    intra_batch: str = "global"


@register("dist")
class DIST(Component):
    Options = DISTOptions
    reads = ("logits",)
    terms = ("dist", "dist_aux")

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        if options.intra_batch not in ("global", "device"):
            raise ConfigError(f"{path}.intra_batch must be global or device, got {options.intra_batch!r}")

    def weights(self):
        o = self.options
        aux = self.ctx.student.get("aux_logits") and self.ctx.teacher.get("aux_logits")
        return {"dist": o.weight, **({"dist_aux": o.weight * o.aux_weight} if aux and o.aux_weight else {})}

    def forward(self, student, teacher, labels):
        o = self.options
        across = self.ctx.sum_across if o.intra_batch == "global" else None
        terms = {"dist": o.weight * dist_loss(student.logits, teacher.logits, o.beta, o.gamma, across)}
        if o.aux_weight and student.aux_logits is not None and teacher.aux_logits is not None:
            terms["dist_aux"] = o.weight * o.aux_weight * dist_loss(student.aux_logits, teacher.aux_logits, o.beta, o.gamma,
                                                                    across)
        return terms
