"""SKD's pair-wise term on the head feature. The released SKD is "skd+kd+adv": its pixel-wise term
is logit KD (kd) and its holistic term the adversarial one (adv)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.checks import positive
from ..losses import pairwise_loss
from .base import Component, check_option_ranges, register


@dataclass
class SKDOptions:
    weight: float = 10.0
    pool: int = 2  # max-pool kernel and stride making the graph's nodes (the CIRKD v1 setting)


@register("skd")
class PairWise(Component):
    Options = SKDOptions
    reads = ("head",)
    terms = ("pairwise",)

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        positive(options.pool, f"{path}.pool")

    def weights(self):
        return {"pairwise": self.options.weight}

    def forward(self, student, teacher, labels):
        return {"pairwise": self.options.weight * pairwise_loss(student.head, teacher.head, self.options.pool)}
