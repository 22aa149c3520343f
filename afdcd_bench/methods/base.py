"""The contract between a distillation method and the one training loop.

A method is one file in this package: a `Component` subclass registered by name. It declares
its typed options (a dataclass: recipe keys under `method.<name>`), the network outputs it reads,
the loss terms it returns (already weighted), the parameters it trains with the student, and any
parts trained by their own optimizer (`own_parts`, stepped by `after_step`). Recipes compose
methods with "+": the loop sums the task loss and every method's terms (docs/methods.md).
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn as nn

from ..config.checks import positive
from ..losses import IGNORE_INDEX
from ..models.segmentor import OUTPUTS, SegmentorOutput

if TYPE_CHECKING:
    from ..config.schema import RecipeConfig

METHODS: dict[str, type["Component"]] = {}


def register(name: str) -> Callable[[type["Component"]], type["Component"]]:
    def deco(cls: type["Component"]) -> type["Component"]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice ({METHODS[name].__module__}, {cls.__module__})")
        if "+" in name:
            raise ValueError(f"method name {name!r} may not contain '+' (it joins methods in recipes)")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class BuildContext:
    """What a method may need to build itself."""

    student: dict[str, int | None]  # channels of each output (models/segmentor.py OUTPUTS); None: absent
    teacher: dict[str, int | None] | None
    num_classes: int
    ignore_index: int = IGNORE_INDEX
    crop_size: tuple[int, int] = (512, 1024)
    num_processes: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] = _same  # concatenation over processes along dim 0
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] = _same  # mean over processes
    sum_across: Callable[[torch.Tensor], torch.Tensor] = _same  # sum over processes, differentiable
    device: torch.device | str = "cpu"  # where the run computes (state held outside modules goes there)
    per_device_batch: int = 1  # images per forward on each process
    seed: int = 0  # the run's seed, for state a method draws itself (identical on every process)
    iterations: int = 40000  # the run's optimiser steps (a method whose terms change during the schedule: KT)
    # each output's stride (input size / its size): SegFormer's logits are at 1/4, a CNN's at 1/8 (docs/networks.md)
    student_strides: dict[str, int | None] = field(default_factory=dict)
    teacher_strides: dict[str, int | None] | None = None


@dataclass
class NoOptions:
    pass


@dataclass
class OwnPart:
    """A part trained by its own optimizer, apart from the student's (a discriminator). It is not a
    submodule of its method, so the student's optimizer, DDP and DeepSpeed never see it."""

    module: nn.Module
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    optimizer: torch.optim.Optimizer | None = None


def check_option_ranges(options: Any, path: str) -> None:
    """Shared rules: weights (`*weight*`, `lambda_*`) >= 0; temperatures, taus and lrs > 0."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "weight" in f.name or f.name.startswith("lambda"):
            positive(value, f"{path}.{f.name}", strict=False)
        elif f.name in ("temperature", "tau", "lr") or f.name.endswith("_temperature"):
            positive(value, f"{path}.{f.name}")


class Component(nn.Module, abc.ABC):
    """One method's loss terms. Subclasses set the class attributes and implement forward (a
    subclass without one cannot be built)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    reads: ClassVar[tuple[str, ...]] = ()  # outputs read from student and teacher (OUTPUTS)
    any_size: ClassVar[tuple[str, ...]] = ()  # of those, the ones it brings to one size itself (else: equal strides)
    terms: ClassVar[tuple[str, ...]] = ()  # names of the terms forward returns
    needs_teacher: ClassVar[bool] = True
    # set: this is a stage of the named method trained on the frozen teacher alone, before any
    # student (engine/stage.py; run once per benchmark, like the teacher)
    stage_of: ClassVar[str | None] = None

    def __init__(self, options: Any, ctx: BuildContext):
        super().__init__()
        self.options = options
        self.ctx = ctx
        self._own: dict[str, OwnPart] = {}  # a plain dict: own parts stay outside the student's modules

    @classmethod
    def check_recipe(cls, options: Any, cfg: "RecipeConfig", path: str) -> None:
        """Refuse bad options at recipe load, naming the dotted key (ConfigError)."""
        check_option_ranges(options, path)

    def weights(self) -> dict[str, float]:
        """The weight of each term, for the run record."""
        return {}

    def clip_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradient norm is clipped at method.clip_grad_norm."""
        return []

    def own_parts(self) -> dict[str, OwnPart]:
        return self._own

    def after_step(self) -> dict[str, float]:
        """After each student optimiser step: train the own parts; returns terms to log."""
        return {}

    def run_state(self) -> Any | None:
        """State outside the trained modules that a stopped run must get back (CIRKD's queues): an
        object with state_dict/load_state_dict, checkpointed with the run. No wrapper broadcasts it."""
        return None

    def state_bytes(self) -> int:
        """Memory of the method's state beyond its trained parameters (for the run record)."""
        return 0

    @abc.abstractmethod
    def forward(self, student: SegmentorOutput, teacher: SegmentorOutput | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's weighted terms of one step (named as in `terms`)."""


def check_reads(cls: type[Component], ctx: BuildContext, resized: frozenset[str] = frozenset()) -> None:
    """resized: the outputs the teacher's side brings to the student's size (method.resize_teacher)."""
    for side, channels in (("student", ctx.student), ("teacher", ctx.teacher)):
        if side == "teacher" and not cls.needs_teacher:
            continue
        for out in cls.reads:
            if out not in OUTPUTS:
                raise ValueError(f"method {cls.name!r} reads {out!r}, not an output of the networks ({OUTPUTS})")
            if channels is not None and channels.get(out) is None:
                raise ValueError(f"method {cls.name!r} reads the {side}'s {out}, which this {side} network does not have")
    if not cls.needs_teacher or not ctx.teacher_strides:
        return
    for out in cls.reads:
        s, t = ctx.student_strides.get(out), ctx.teacher_strides.get(out)
        if s and t and s != t and out not in cls.any_size and out not in resized:
            raise ValueError(f"method {cls.name!r} compares the student's {out} (1/{s} of the input) with the teacher's (1/{t}): "
                             f"it needs them at one size, and this pair's differ (a heterogeneous pair: set "
                             f"method.resize_teacher=true to bring the teacher's maps to the student's size, docs/networks.md)")


class RunStates:
    """The methods' state outside their modules (queues), for Accelerate's checkpoint."""

    def __init__(self, states: dict[str, Any]):
        self.states = states

    def state_dict(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self.states.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.states):
            raise ValueError(f"checkpoint holds the state of {sorted(state)}, this method {sorted(self.states)}")
        for k, s in self.states.items():
            s.load_state_dict(state[k])
