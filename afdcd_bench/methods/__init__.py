"""Distillation methods: every module of this package is one method, found by name.

The training loop knows only `Method`: the task loss plus the terms of the recipe's methods
("cwd+kd+adv" sums three), their trained parameters, and the parts with their own optimizer.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch
import torch.nn as nn

from ..losses import resize_to, task_loss
from ..models import SegmentorOutput
from .base import METHODS, BuildContext, Component, OwnPart, RunStates, check_reads, register

_SKIP = {"base"}


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()


def option_types() -> dict[str, type]:
    """Each registered method's options dataclass, by name (the schema types recipes with them)."""
    return {name: cls.Options for name, cls in METHODS.items()}


def needs_teacher(name: str) -> bool:
    return any(METHODS[n].needs_teacher for n in name.split("+"))


def stage_of(name: str) -> str | None:
    """The method whose teacher-side stage this method.name trains (None: it trains a student)."""
    stages = {METHODS[n].stage_of for n in name.split("+") if n in METHODS}
    return next(iter(stages)) if len(stages) == 1 else None


class Method(nn.Module):
    """Task loss + the terms of each component; its modules are trained with the student."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        super().__init__()
        self.aux_weight = cfg.aux_weight
        self.has_aux = bool(ctx.student.get("aux_logits"))  # the task's aux term exists only with an aux head
        self.ignore_index = ctx.ignore_index
        parts = {}
        seen: dict[str, str] = {}
        self.resized: frozenset[str] = frozenset()
        if getattr(cfg, "resize_teacher", False) and ctx.teacher_strides:
            self.resized = frozenset(out for out, t in ctx.teacher_strides.items()
                                     if t and ctx.student_strides.get(out) and ctx.student_strides[out] != t)
        for name in cfg.components:
            cls = METHODS[name]
            check_reads(cls, ctx, self.resized)
            for term in cls.terms:
                if term in seen or term == "task":
                    raise ValueError(f"method.name {cfg.name!r}: {name} and {seen.get(term, 'the task loss')} both "
                                     f"compute the {term!r} term; keep one of them")
                seen[term] = name
            options = cfg.options.get(name) or cls.Options()
            parts[name] = cls(options, ctx)
        self.parts = nn.ModuleDict(parts)

    @property
    def components(self) -> list[Component]:
        return list(self.parts.values())

    def weights(self) -> dict[str, float]:
        out = {"task": 1.0, **({"task_aux": self.aux_weight} if self.has_aux else {})}
        for c in self.components:
            out.update(c.weights())
        return out

    def clip_parameters(self) -> list[nn.Parameter]:
        return [p for c in self.components for p in c.clip_parameters()]

    def own_parts(self) -> dict[str, OwnPart]:
        return {f"{c.name}.{k}": part for c in self.components for k, part in c.own_parts().items()}

    def run_states(self) -> dict[str, Any]:
        return {c.name: state for c in self.components if (state := c.run_state()) is not None}

    def state_bytes(self) -> dict[str, int]:
        return {c.name: c.state_bytes() for c in self.components}

    def after_step(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.components:
            out.update(c.after_step())
        return out

    def forward(self, student: SegmentorOutput, teacher: SegmentorOutput | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"task": task_loss(student.logits, labels, student.aux_logits, self.aux_weight, self.ignore_index)}
        if self.resized and teacher is not None:
            teacher = teacher._replace(**{out: resize_to(getattr(teacher, out), tuple(getattr(student, out).shape[-2:]))
                                          for out in self.resized if getattr(teacher, out) is not None
                                          and getattr(student, out) is not None})
        for c in self.components:
            terms.update(c(student, teacher, labels))
        return terms


class OwnPartsState:
    """The own parts' weights and optimiser states, for Accelerate's checkpoint (register_for_checkpointing)."""

    def __init__(self, parts: dict[str, OwnPart]):
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        return {k: {"module": p.module.state_dict(), "optimizer": p.optimizer.state_dict() if p.optimizer else None}
                for k, p in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.parts):
            raise ValueError(f"checkpoint holds own parts {sorted(state)}, this method {sorted(self.parts)}")
        for k, p in self.parts.items():
            p.module.load_state_dict(state[k]["module"])
            if p.optimizer is not None and state[k]["optimizer"] is not None:
                p.optimizer.load_state_dict(state[k]["optimizer"])


def build_method(cfg: Any, ctx: BuildContext) -> Method:
    """cfg: the recipe's MethodConfig."""
    unknown = [n for n in cfg.components if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {', '.join(unknown)!s} in method.name {cfg.name!r}; registered: {sorted(METHODS)}")
    if needs_teacher(cfg.name) and ctx.teacher is None:
        raise ValueError(f"method {cfg.name!r} needs a teacher: set teacher.checkpoint (or teacher.recipe)")
    return Method(cfg, ctx)


__all__ = ["METHODS", "BuildContext", "Component", "Method", "OwnPart", "OwnPartsState", "RunStates", "build_method", "needs_teacher",
           "option_types", "register", "stage_of"]
