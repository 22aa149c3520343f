"""Range checks on a loaded recipe, so a bad value stops the run at load time with its dotted key
instead of running to a NaN record or failing deep inside torch."""
from __future__ import annotations

from .schema import ConfigError, RecipeConfig

OUTPUT_STRIDE = 8  # every backbone here is dilated to stride 8 (models/backbones.py)
PRECISIONS = ("no", "fp16", "bf16", "fp8")
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")  # Accelerate's


def _positive(value: float, key: str, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise ConfigError(f"{key} must be {'> 0' if strict else '>= 0'}, got {value!r}")


def _pair(values: list, key: str) -> None:
    if len(values) != 2:
        raise ConfigError(f"{key} must be two sides [height, width], got {values!r}")
    for i, v in enumerate(values):
        _positive(v, f"{key}[{i}]")


def check_ranges(cfg: RecipeConfig) -> None:
    d, t, e, m = cfg.data, cfg.train, cfg.eval, cfg.method
    _positive(cfg.num_classes, "num_classes")
    _pair(d.crop_size, "data.crop_size")
    if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
        raise ConfigError(f"data.scale_range must be [low, high] with 0 < low <= high, got {d.scale_range!r}")
    if d.scale_step is not None:
        _positive(d.scale_step, "data.scale_step")
        steps = (d.scale_range[1] - d.scale_range[0]) / d.scale_step
        if abs(steps - round(steps)) > 1e-6:
            raise ConfigError(f"data.scale_step {d.scale_step} does not divide data.scale_range {d.scale_range} into whole steps")
    _positive(d.num_workers, "data.num_workers", strict=False)
    for key in ("iterations", "effective_batch", "val_interval", "checkpoint_interval", "log_interval"):
        _positive(getattr(t, key), f"train.{key}")
    _positive(t.lr, "train.lr")
    _positive(t.weight_decay, "train.weight_decay", strict=False)
    _positive(t.momentum, "train.momentum", strict=False)
    _positive(t.poly_power, "train.poly_power", strict=False)
    if t.mixed_precision not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision must be one of {PRECISIONS}, got {t.mixed_precision!r}")
    for i, name in enumerate(t.trackers):
        if name not in TRACKERS:
            raise ConfigError(f"train.trackers[{i}]: unknown tracker {name!r}; Accelerate supports {', '.join(TRACKERS)}")
    if cfg.published.selected_on not in ("val", "test"):
        raise ConfigError(f"published.selected_on must be val or test, got {cfg.published.selected_on!r}")
    if cfg.published.selected_on == "test" and not d.test_split:
        raise ConfigError("published.selected_on: test needs data.test_split (the split the published number selected on)")
    _positive(e.batch_size, "eval.batch_size")
    if not e.scales:
        raise ConfigError("eval.scales must list at least one scale, e.g. [1.0]")
    for i, s in enumerate(e.scales):
        _positive(s, f"eval.scales[{i}]")
    if e.mode not in ("whole", "slide"):
        raise ConfigError(f"eval.mode must be whole or slide, got {e.mode!r}")
    if e.mode == "slide":
        if e.crop_size is None:
            raise ConfigError("eval.crop_size (the sliding window) is needed with eval.mode=slide")
        _pair(e.crop_size, "eval.crop_size")
        if e.stride is not None:
            _pair(e.stride, "eval.stride")
    for key in ("aux_weight", "lambda_kd", "lambda_fd", "lambda_ctr", "clip_grad_norm"):
        _positive(getattr(m, key), f"method.{key}", strict=False)
    _positive(m.temperature, "method.temperature")
    if m.name == "afdcd":
        _check_afdcd_shapes(cfg)


def _check_afdcd_shapes(cfg: RecipeConfig) -> None:
    """The crop, the output stride, the pool and the patch must leave at least one whole patch."""
    a = cfg.method.afdcd
    _positive(a.groups, "method.afdcd.groups")
    _pair(a.patch, "method.afdcd.patch")
    _positive(a.pool, "method.afdcd.pool", strict=False)
    _positive(a.tau, "method.afdcd.tau")
    if not 0 <= a.mask_ratio < 1:
        raise ConfigError(f"method.afdcd.mask_ratio must be in [0, 1), got {a.mask_ratio!r}")
    h, w = (-(-side // OUTPUT_STRIDE) for side in cfg.data.crop_size)  # a stride-8 map rounds up
    if a.pool:
        h, w = h // a.pool, w // a.pool
    if h < a.patch[0] or w < a.patch[1]:
        raise ConfigError(
            f"data.crop_size {cfg.data.crop_size} gives a {h}x{w} map after output stride {OUTPUT_STRIDE} and "
            f"method.afdcd.pool {a.pool}, smaller than one method.afdcd.patch {a.patch}: use a larger crop, "
            f"a smaller pool or a smaller patch"
        )
