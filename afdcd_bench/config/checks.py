"""Range checks on a loaded recipe, so a bad value stops the run at load time with its dotted key
instead of running to a NaN record or failing deep inside torch."""
from __future__ import annotations

from .schema import BUDGET_KINDS, COMPILE_TARGETS, OPTIMIZER_KERNELS, ConfigError, RecipeConfig

OUTPUT_STRIDE = 8  # every CNN backbone here is dilated to stride 8 (models/backbones.py)
# SegFormer's outputs where they are not at 1/8 (docs/networks.md); what a network computes says it
# too (output_strides): this is for checking a recipe before building anything
SEGFORMER_STRIDES = {"logits": 4, "head": 4, "features": 32, "c3": 16}


def tap_stride(arch: str, tap: str) -> int:
    """The stride of a network's output by the recipe's arch, for checks at load."""
    return SEGFORMER_STRIDES.get(tap, OUTPUT_STRIDE) if arch == "segformer" else OUTPUT_STRIDE
PRECISIONS = ("no", "fp16", "bf16", "fp8")
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")  # Accelerate's

PUBLISHED_SPLITS = ("val", "test", "test-server")
PROTOCOLS = ("2023", "2025")


def positive(value: float, key: str, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise ConfigError(f"{key} must be {'> 0' if strict else '>= 0'}, got {value!r}")


def fraction(value: float, key: str) -> None:
    """A share in [0, 1): mask ratios."""
    if not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def pair(values: list, key: str) -> None:
    if len(values) != 2:
        raise ConfigError(f"{key} must be two sides [height, width], got {values!r}")
    for i, v in enumerate(values):
        positive(v, f"{key}[{i}]")


def check_budget(cfg: RecipeConfig) -> None:
    b = cfg.budget
    if b.kind not in BUDGET_KINDS:
        raise ConfigError(f"budget.kind must be one of {', '.join(BUDGET_KINDS)}, got {b.kind!r}")
    positive(b.scale, "budget.scale")
    if b.kind == "compute":
        missing = [k for k in ("reference", "reference_iterations", "reference_cost_ms", "cost_ms", "recipe_iterations")
                   if getattr(b, k) is None]
        if missing:
            raise ConfigError(f"budget.kind compute needs budget.{', budget.'.join(missing)} (reproduce --equal-compute sets them)")
        for k in ("reference_cost_ms", "cost_ms"):
            positive(getattr(b, k), f"budget.{k}")


def check_ranges(cfg: RecipeConfig) -> None:
    d, t, e, m = cfg.data, cfg.train, cfg.eval, cfg.method
    positive(cfg.num_classes, "num_classes")
    pair(d.crop_size, "data.crop_size")
    if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
        raise ConfigError(f"data.scale_range must be [low, high] with 0 < low <= high, got {d.scale_range!r}")
    if d.scale_step is not None:
        positive(d.scale_step, "data.scale_step")
        steps = (d.scale_range[1] - d.scale_range[0]) / d.scale_step
        if abs(steps - round(steps)) > 1e-6:
            raise ConfigError(f"data.scale_step {d.scale_step} does not divide data.scale_range {d.scale_range} into whole steps")
    if d.num_workers != "auto":
        if isinstance(d.num_workers, str):
            raise ConfigError(f"data.num_workers must be a number of workers or auto, got {d.num_workers!r}")
        positive(d.num_workers, "data.num_workers", strict=False)
    for key in ("pin_memory", "persistent_workers"):
        if getattr(d, key) not in (True, False, "auto"):
            raise ConfigError(f"data.{key} must be true, false or auto, got {getattr(d, key)!r}")
    if d.cache not in ("auto", "off", "required"):
        raise ConfigError(f"data.cache must be one of auto, off, required, got {d.cache!r}")
    for key in ("iterations", "effective_batch", "val_interval", "checkpoint_interval", "log_interval"):
        positive(getattr(t, key), f"train.{key}")
    positive(t.lr, "train.lr")
    positive(t.seed, "train.seed", strict=False)
    positive(t.collective_timeout, "train.collective_timeout")
    positive(t.weight_decay, "train.weight_decay", strict=False)
    positive(t.momentum, "train.momentum", strict=False)
    positive(t.poly_power, "train.poly_power", strict=False)
    if not 0 <= t.lr_floor < t.lr:
        raise ConfigError(f"train.lr_floor must be in [0, train.lr {t.lr}), got {t.lr_floor!r}")
    if t.mixed_precision not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision must be one of {PRECISIONS}, got {t.mixed_precision!r}")
    for i, name in enumerate(t.trackers):
        if name not in TRACKERS:
            raise ConfigError(f"train.trackers[{i}]: unknown tracker {name!r}; Accelerate supports {', '.join(TRACKERS)}")
    if cfg.published.split not in PUBLISHED_SPLITS:
        raise ConfigError(f"published.split must be one of {', '.join(PUBLISHED_SPLITS)}, got {cfg.published.split!r}")
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    if cfg.published.selected_on not in ("val", "test"):
        raise ConfigError(f"published.selected_on must be val or test, got {cfg.published.selected_on!r}")
    if cfg.published.selected_on == "test" and not d.test_split:
        raise ConfigError("published.selected_on: test needs data.test_split (the split the published number selected on)")
    check_budget(cfg)
    positive(e.batch_size, "eval.batch_size")
    if not e.scales:
        raise ConfigError("eval.scales must list at least one scale, e.g. [1.0]")
    for i, s in enumerate(e.scales):
        positive(s, f"eval.scales[{i}]")
    if e.mode not in ("whole", "slide"):
        raise ConfigError(f"eval.mode must be whole or slide, got {e.mode!r}")
    if e.mode == "slide":
        if e.crop_size is None:
            raise ConfigError("eval.crop_size (the sliding window) is needed with eval.mode=slide")
        pair(e.crop_size, "eval.crop_size")
        if e.stride is not None:
            pair(e.stride, "eval.stride")
    positive(m.aux_weight, "method.aux_weight", strict=False)
    positive(m.clip_grad_norm, "method.clip_grad_norm", strict=False)
    from ..methods import METHODS  # each method checks its own options (methods/base.py)

    if cfg.train.optimizer_kernel not in OPTIMIZER_KERNELS:
        raise ConfigError(f"train.optimizer_kernel must be one of {', '.join(OPTIMIZER_KERNELS)}, got {cfg.train.optimizer_kernel!r}")
    unknown = sorted(set(cfg.train.compile) - set(COMPILE_TARGETS))
    if unknown:
        raise ConfigError(f"train.compile: {', '.join(unknown)} unknown; choose from {', '.join(COMPILE_TARGETS)}")
    if cfg.data.prefetch_factor is not None:
        positive(cfg.data.prefetch_factor, "data.prefetch_factor")
    staged = [n for n in m.components if n in METHODS and METHODS[n].stage_of]
    if staged and len(m.components) > 1:
        raise ConfigError(f"method.name {m.name!r}: {staged[0]} is a stage trained on the teacher alone; it cannot be "
                          f"combined with other methods")
    for name in m.components:
        options = m.options.get(name)
        if options is not None:
            METHODS[name].check_recipe(options, cfg, f"method.{name}")
