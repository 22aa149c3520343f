"""The individually trained student: the task loss alone, no teacher."""
from __future__ import annotations

from .base import Component, register


@register("baseline")
class Baseline(Component):
    needs_teacher = False

    def forward(self, student, teacher, labels):
        return {}
