"""Af-DCD: logit KD + masked feature mimicking + dense contrast on C4 (docs/method.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config.checks import fraction, pair, positive, tap_stride
from ..config.schema import ConfigError
from ..losses import AfDCDLoss, kd_loss
from .base import Component, check_option_ranges, register


@dataclass
class AfDCDOptions:
    lambda_kd: float = 1.0
    temperature: float = 1.0
    lambda_fd: float = 2e-6
    lambda_ctr: float = 0.005
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


@register("afdcd")
class AfDCD(Component):
    Options = AfDCDOptions
    reads = ("logits", "features")
    terms = ("kd", "fd", "ctr")

    def __init__(self, options: AfDCDOptions, ctx):
        super().__init__(options, ctx)
        a = options
        self.feature_loss = AfDCDLoss(
            ctx.student["features"], ctx.teacher["features"], mode=a.mode, groups=a.groups, patch=tuple(a.patch),
            pool=a.pool, tau=a.tau, distance=a.distance, mask=a.mask, mask_ratio=a.mask_ratio, projector=a.projector,
            backend=a.backend,
        )

    @classmethod
    def check_recipe(cls, options, cfg, path):
        """The crop, the output stride, the pool and the patch must leave at least one whole patch."""
        check_option_ranges(options, path)
        positive(options.groups, f"{path}.groups")
        pair(options.patch, f"{path}.patch")
        positive(options.pool, f"{path}.pool", strict=False)
        fraction(options.mask_ratio, f"{path}.mask_ratio")
        stride = tap_stride(cfg.student.arch, "features")
        h, w = (-(-side // stride) for side in cfg.data.crop_size)  # a dilated stride-8 map rounds up
        if options.pool:
            h, w = h // options.pool, w // options.pool
        if h < options.patch[0] or w < options.patch[1]:
            raise ConfigError(
                f"data.crop_size {cfg.data.crop_size} gives a {h}x{w} map after output stride {stride} and "
                f"{path}.pool {options.pool}, smaller than one {path}.patch {options.patch}: use a larger crop, "
                f"a smaller pool or a smaller patch"
            )

    def weights(self):
        o = self.options
        return {**({"kd": o.lambda_kd} if o.lambda_kd else {}), "fd": o.lambda_fd, "ctr": o.lambda_ctr}

    def clip_parameters(self):
        return list(self.feature_loss.parameters())

    def forward(self, student, teacher, labels):
        o = self.options
        terms = {}
        if o.lambda_kd:
            terms["kd"] = o.lambda_kd * kd_loss(student.logits, teacher.logits, o.temperature)
        fd, ctr = self.feature_loss(student.features.float(), teacher.features.float())
        terms["fd"] = o.lambda_fd * fd
        terms["ctr"] = o.lambda_ctr * ctr
        return terms
