"""MasKD, stage 1: receptive tokens learnt on the frozen teacher alone (engine/stage.py runs it).

Each token w_t (one weight per class) makes a soft mask sigmoid(<w_t, z_T(x)>) of the teacher's
logits; the tokens are trained so that the teacher's logits under their summed masks still
classify the pixels (CE), while the masks of different tokens overlap little (Dice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config.schema import ConfigError
from ..losses.maskd import masked_logits, token_dice, token_masks
from ..losses.task import segmentation_ce
from .base import Component, check_option_ranges, register

TEACHER_MODES = ("eval", "train")


@dataclass
class MasKDTokensOptions:
    num_tokens: int = 8
    init_std: float = 0.01
    dice_weight: float = 1.0
    # "eval": the teacher as it is in stage 2 (running BN statistics, no dropout), so the tokens are
    # learnt on the logits they will mask there, and a token run does not depend on how its batch is
    # split over devices. "train": as released (BN on each device's batch, dropout on)
    teacher_mode: str = "eval"


@register("maskd_tokens")
class ReceptiveTokens(Component):
    Options = MasKDTokensOptions
    reads = ("logits",)
    terms = ("tokens_ce", "tokens_dice")
    stage_of = "maskd"

    def __init__(self, options: MasKDTokensOptions, ctx):
        super().__init__(options, ctx)
        g = torch.Generator().manual_seed(ctx.seed)
        self.tokens = nn.Parameter(torch.randn(options.num_tokens, ctx.num_classes, generator=g) * options.init_std)

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        if options.num_tokens < 1:
            raise ConfigError(f"{path}.num_tokens must be >= 1, got {options.num_tokens}")
        if options.teacher_mode not in TEACHER_MODES:
            raise ConfigError(f"{path}.teacher_mode must be one of {', '.join(TEACHER_MODES)}, got {options.teacher_mode!r}")

    def weights(self):
        return {"tokens_ce": 1.0, "tokens_dice": self.options.dice_weight}

    def forward(self, student, teacher, labels):
        logits = teacher.logits.detach()
        masks = token_masks(logits, self.tokens)
        return {"tokens_ce": segmentation_ce(masked_logits(logits, masks), labels, self.ctx.ignore_index),
                "tokens_dice": self.options.dice_weight * token_dice(masks)}
