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
    # loader settings that change no number (engine/feeding.py). num_workers: per training process; auto:
    # the cores the executor gave the process, less its own, on a GPU (none on a CPU, where the step
    # itself uses them)
    num_workers: Union[int, str] = "auto"
    pin_memory: Union[bool, str] = "auto"  # page-locked batches for asynchronous copies; auto: on a GPU
    persistent_workers: Union[bool, str] = "auto"  # workers kept between epochs; auto: the training loader's
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead (torch's default: 2)
    # decoded pixels cached once (`afdcd-bench data cache`; afdcd_bench/data/cache.py): auto (read a valid
    # cache where there is one), off, required (refuse to start without one); cache_dir: where (default
    # <data root>/.afdcd-cache, or $AFDCD_DATA_CACHE). Neither changes a number.
    cache: str = "auto"
    cache_dir: Optional[str] = None
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
class MethodConfig:
    """The loss of a run: the task loss plus the terms of each named method.

    name joins registered methods with "+" ("cwd+kd+adv", "kd+fd"); each one's typed options sit
    under its own name (method.cwd.tau) and are declared beside it in afdcd_bench/methods/.
    """

    name: str = "baseline"
    aux_weight: float = 0.4
    clip_grad_norm: float = 15.0  # on the methods' align/projector parameters (Af-DCD, as released)
    # a heterogeneous pair (a SegFormer teacher's 1/4 maps, a CNN student's 1/8): bring each teacher map
    # a method reads to the student's size (area-averaged where finer, bilinear where coarser) instead
    # of refusing the method (docs/networks.md)
    resize_teacher: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # method -> its options dataclass

    @property
    def components(self) -> list[str]:
        return self.name.split("+")

    def __getattr__(self, name: str) -> Any:
        """cfg.method.afdcd: the options of a method of this run."""
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(f"method {self.__dict__.get('name')!r} has no option section or setting {name!r}")


OPTIMIZER_KERNELS = ("auto", "for_loop", "foreach", "fused")  # torch's implementations of an optimiser step
COMPILE_TARGETS = ("student", "teacher", "projector")


@dataclass
class TrainConfig:
    iterations: int = 40000
    effective_batch: int = 16
    optimizer: str = "sgd"  # sgd (the paper) | adamw
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    lr_floor: float = 0.0  # poly decays lr to this (DIST's and MasKD's releases: 1e-4)
    seed: int = 0
    val_interval: int = 800
    checkpoint_interval: int = 800
    # A finished run drops its resumable state (model + optimiser: the largest thing in its folder;
    # final.safetensors holds the model); true keeps it (engine/finished.py).
    keep_state: bool = False
    # Seconds a process of a multi-process run waits at a collective for the others before it gives
    # up with a message (engine/collectives.py); the wait is announced well before.
    collective_timeout: float = 1800.0
    mixed_precision: str = "no"
    log_interval: int = 50
    tensorboard: bool = False  # shorthand for trackers: [tensorboard]
    # Experiment trackers through Accelerate: tensorboard, wandb, mlflow, aim, comet_ml, clearml,
    # dvclive, swanlab, trackio (each needs its own package installed); the config is logged too.
    trackers: list[str] = field(default_factory=list)
    # Speed settings (benchmarks/bench_step.py measures them); each gives the same numbers up to float rounding.
    optimizer_kernel: str = "auto"  # auto (torch's choice) | for_loop | foreach | fused
    channels_last: bool = False  # networks, the method's modules and the inputs in NHWC memory layout
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms for the fixed crop (CUDA only)
    teacher_inference_mode: bool = False  # the teacher's forward under inference_mode instead of no_grad
    # torch.compile these parts (opt-in): student, teacher, projector (every method module named
    # *projector: Af-DCD's, FD's, CIRKD's). Compilations and recompilations go into the run record.
    compile: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide
    crop_size: Optional[list[int]] = None  # window for slide mode
    stride: Optional[list[int]] = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    all_slots: bool = False  # average IoU over every label slot (COCO-Stuff's published 182)
    batch_size: int = 1
    teacher_check: bool = True  # score the teacher on val_split at the start of a distillation run (sanity check)


@dataclass
class PublishedConfig:
    miou: Optional[float] = None
    source: Optional[str] = None
    # the split the published number's checkpoint was selected on: "val", or "test" where the
    # release selected on the reported split itself (CamVid's Af-DCD rows)
    selected_on: str = "val"
    # the split the number is on: "val", "test", or "test-server" (Cityscapes' 1525 test images scored by
    # the benchmark's server: never beside a val measurement without saying so)
    split: str = "val"


BUDGET_KINDS = ("iterations", "compute")


@dataclass
class BudgetConfig:
    """How a run's iteration count was chosen (docs/equal_compute.md). Set by `reproduce --equal-compute`
    and `--schedule-scale`, never by hand: the default is the recipe's own count (equal iterations)."""

    kind: str = "iterations"  # iterations: the recipe's count x scale | compute: the reference's cost x scale
    scale: float = 1.0
    reference: Optional[str] = None  # compute: the recipe whose iterations x cost per step every run gets
    reference_iterations: Optional[int] = None  # that recipe's own count
    reference_cost_ms: Optional[float] = None  # its measured cost of one training step
    cost_ms: Optional[float] = None  # this recipe's measured cost of one training step
    recipe_iterations: Optional[int] = None  # this recipe's own count, before the budget
    costs_device: Optional[str] = None  # where the costs were measured


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
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    ablation_of: Optional[str] = None  # the main recipe this one varies; run by `reproduce --ablations`
    on_request: bool = False  # reproduce runs it only when --methods names it (slow extras of the demo)
    # the table it belongs to: "2023" (Af-DCD's and CIRKD v1's CNN students) or "2025" (CIRKDv2's students,
    # SegFormer); reproduce runs the 2023 one unless --protocol or --only says otherwise
    protocol: str = "2023"
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


# Keys of the single-method schema, now options of a method; named in the error.
MOVED_METHOD_KEYS = {"lambda_kd": "method.kd.weight or method.afdcd.lambda_kd",
                     "temperature": "method.kd.temperature or method.afdcd.temperature",
                     "lambda_fd": "method.afdcd.lambda_fd or method.fd.weight", "lambda_ctr": "method.afdcd.lambda_ctr"}


def _method_from_dict(data: dict[str, Any], path: str) -> MethodConfig:
    """Common keys typed as usual; every other key must be a registered method's options. Sections
    of methods the run does not use are checked too, then left out (a base file may hold them)."""
    from ..methods import option_types  # declared beside each method; found by name

    types = option_types()
    common = {f.name for f in dataclasses.fields(MethodConfig)} - {"options"}
    moved = sorted(set(data) & set(MOVED_METHOD_KEYS))
    if moved:
        raise ConfigError("; ".join(f"{path}.{k} is now {MOVED_METHOD_KEYS[k]}" for k in moved))
    unknown = sorted(set(data) - common - set(types))
    if unknown:
        raise ConfigError(f"unknown recipe key(s): {', '.join(f'{path}.{k}' for k in unknown)} "
                          f"(allowed: {sorted(common)} and the options of a method: {sorted(types)})")
    cfg = _plain_from_dict(MethodConfig, {k: v for k, v in data.items() if k in common}, path)
    names = cfg.components
    if any(not n.strip() for n in names):
        raise ConfigError(f"{path}.name: {cfg.name!r} has an empty method name before or after a '+' (methods join as in "
                          f"'cwd+kd+adv')")
    if "baseline" in names and len(names) > 1:
        rest = "+".join(n for n in names if n != "baseline")
        raise ConfigError(f"{path}.name: {cfg.name!r}: baseline is training without distillation and joins no other method; "
                          f"name the others alone ({rest!r})")
    bad = [n for n in names if n not in types]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"{path}.name: {cfg.name!r} must join distinct registered methods with '+' "
                          f"({', '.join(bad) or 'a method repeats'}); registered: {sorted(types)}")
    options = {}
    for key in sorted(set(data) & set(types)):
        section = data[key]
        if section is not None and not isinstance(section, dict) and not dataclasses.is_dataclass(section):
            raise ConfigError(f"{path}.{key}: expected a mapping of options, got {section!r}")
        options[key] = _coerce(section or {}, types[key], f"{path}.{key}")
    cfg.options = {n: options.get(n) or types[n]() for n in names}
    return cfg


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    if cls is MethodConfig:
        return _method_from_dict(data, path or "method")
    return _plain_from_dict(cls, data, path)


def _plain_from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown recipe key(s): {', '.join(where + k for k in unknown)} (allowed: {sorted(names)})")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data, with each method's options under the method's name as a recipe writes them."""
    out = dataclasses.asdict(cfg)
    method = out.get("method") if isinstance(cfg, RecipeConfig) else out if isinstance(cfg, MethodConfig) else None
    if isinstance(method, dict) and "options" in method:
        options = method.pop("options")
        kept = getattr(cfg, "method", cfg).options  # sections of methods without options are left out
        method.update({k: v for k, v in options.items() if dataclasses.fields(kept[k])})
    return out
