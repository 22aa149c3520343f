"""The recipe schema: every setting of a run, with the paper's defaults, typed and named.

Nested dataclasses so that an unknown or mistyped key is an error naming its dotted path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = None
    crop_size: list[int] = field(default_factory=lambda: [512, 1024])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    # Random scales drawn from low, low + step, ..., high (the release: 0.1, 16 values for 0.5..2.0);
    # null draws uniformly from the range.
    scale_step: Optional[float] = None
    flip: bool = True  # random horizontal flip in training
    num_workers: int = 0
    val_split: str = "val"  # the split the best checkpoint is selected on
    test_split: Optional[str] = None  # also scored at each validation; then the reported number (docs/method.md)


@dataclass
class ModelConfig:
    arch: str = "deeplabv3"
    backbone: str = "resnet18"
    pretrained: Union[bool, str] = False
    aux: Optional[bool] = None
    head_width: Optional[int] = None


@dataclass
class TeacherConfig(ModelConfig):
    checkpoint: Optional[str] = None  # a trained teacher (our format); unset: the best of `recipe`'s run (config/runs.py)
    recipe: Optional[str] = None  # the recipe whose run produces it (reproduce.sh order)


@dataclass
class AfDCDConfig:
    mode: str = "omni"
    groups: int = 16
    patch: list[int] = field(default_factory=lambda: [4, 4])
    pool: int = 4
    tau: float = 0.07
    distance: str = "l1"
    mask: str = "random"
    mask_ratio: float = 0.75
    projector: str = "basic"
    backend: str = "eager"  # contrastive term: eager (torch.cdist) or compiled (torch.compile, same numbers)


@dataclass
class MethodConfig:
    name: str = "baseline"
    aux_weight: float = 0.4
    lambda_kd: float = 1.0
    temperature: float = 1.0
    lambda_fd: float = 2e-6
    lambda_ctr: float = 0.005
    clip_grad_norm: float = 15.0  # on the loss module's align/projector, as released
    afdcd: AfDCDConfig = field(default_factory=AfDCDConfig)


@dataclass
class TrainConfig:
    iterations: int = 40000
    effective_batch: int = 16
    optimizer: str = "sgd"  # sgd (the paper) | adamw
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    seed: int = 0
    val_interval: int = 800
    checkpoint_interval: int = 800
    mixed_precision: str = "no"
    log_interval: int = 50
    tensorboard: bool = False  # shorthand for trackers: [tensorboard]
    # Experiment trackers through Accelerate: tensorboard, wandb, mlflow, aim, comet_ml, clearml,
    # dvclive, swanlab, trackio (each needs its own package installed); the config is logged too.
    trackers: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide
    crop_size: Optional[list[int]] = None  # window for slide mode
    stride: Optional[list[int]] = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    all_slots: bool = False  # average IoU over every label slot (COCO-Stuff's published 182)
    batch_size: int = 1


@dataclass
class PublishedConfig:
    miou: Optional[float] = None
    source: Optional[str] = None
    # the split the published number's checkpoint was selected on: "val", or "test" where the
    # release selected on the reported split itself (CamVid's Af-DCD rows)
    selected_on: str = "val"


@dataclass
class RecipeConfig:
    name: str = ""
    benchmark: str = "digits"
    num_classes: int = 11
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: Optional[TeacherConfig] = None
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    published: PublishedConfig = field(default_factory=PublishedConfig)
    ablation_of: Optional[str] = None  # the main recipe this one varies; run by `reproduce --ablations`
    output_dir: str = "runs"  # run folders: <output_dir>/<name>/seed<seed> (config/runs.py)


class ConfigError(ValueError):
    pass


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin is Union:
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path}: null is not allowed")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {options}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected a YAML boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 2e-6 (no dot) as a string: YAML 1.1
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r} (YAML reads no/yes/on/off as booleans: quote it, \"no\")")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown recipe key(s): {', '.join(where + k for k in unknown)} (allowed: {sorted(names)})")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
