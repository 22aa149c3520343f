"""IFVD: intra-class feature variation of the head feature, student against teacher."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import ifvd_loss
from .base import Component, register


@dataclass
class IFVDOptions:
    weight: float = 20.0
    # false: the mean is over labelled pixels. true: over every pixel, as released (the published
    # numbers came from it); it scales the term by the labelled fraction of each batch.
    count_ignored: bool = False


@register("ifvd")
class IFVD(Component):
    Options = IFVDOptions
    reads = ("head",)
    terms = ("ifvd",)

    def weights(self):
        return {"ifvd": self.options.weight}

    def forward(self, student, teacher, labels):
        o = self.options
        loss = ifvd_loss(student.head, teacher.head, labels, self.ctx.num_classes, self.ctx.ignore_index, o.count_ignored)
        return {"ifvd": o.weight * loss}
