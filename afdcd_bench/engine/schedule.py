"""The learning-rate schedule of every recipe: poly decay, optionally to a floor (docs/method.md)."""
from __future__ import annotations


def poly_lr(base: float, step: int, total: int, power: float, floor: float = 0.0) -> float:
    """lr of the update that makes step `step` + 1: floor + (base - floor) * (1 - step / total) ** power."""
    return floor + (base - floor) * (1.0 - step / total) ** power
