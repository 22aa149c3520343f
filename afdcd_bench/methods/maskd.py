"""MasKD, stage 2: the student mimics the teacher's logits under the masks of receptive tokens
learnt in stage 1 (methods/maskd_tokens.py) and frozen here; on the logits and (x0.4) the aux
logits, the aux masks from the teacher's aux logits with the same tokens, as released. No KD term."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file

from ..losses.maskd import maskd_loss, token_masks
from .base import Component, register


@dataclass
class MasKDOptions:
    weight: float = 1.0
    aux_weight: float = 0.4  # on the aux logits, where both networks have them
    stage_recipe: Optional[str] = None  # the recipe that learns the tokens (reproduce runs it before the students)
    stage_weights: Optional[str] = None  # its tokens file; unset: that recipe's run (config/runs.stage_weights)


@register("maskd")
class MaskedDistillation(Component):
    Options = MasKDOptions
    reads = ("logits",)
    terms = ("maskd", "maskd_aux")

    def __init__(self, options: MasKDOptions, ctx):
        super().__init__(options, ctx)
        path = options.stage_weights
        if not path or not Path(path).is_file():
            run = f"run the recipe {options.stage_recipe} first (reproduce.sh runs it before the students) or " if options.stage_recipe else ""
            raise FileNotFoundError(f"MasKD's receptive tokens {path or '(none given)'} not found: {run}"
                                    f"set method.maskd.stage_weights to a tokens file of stage 1")
        tokens = load_file(path)["tokens"]
        if tokens.shape[1] != ctx.num_classes:
            raise ValueError(f"the tokens in {path} were learnt for {tokens.shape[1]} classes, this recipe has {ctx.num_classes}")
        self.register_buffer("tokens", tokens.float())  # frozen: a buffer, in no optimiser

    def weights(self):
        o = self.options
        aux = self.ctx.student.get("aux_logits") and self.ctx.teacher.get("aux_logits")
        return {"maskd": o.weight, **({"maskd_aux": o.weight * o.aux_weight} if aux and o.aux_weight else {})}

    def state_bytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size()

    def forward(self, student, teacher, labels):
        o = self.options
        terms = {"maskd": o.weight * maskd_loss(student.logits, teacher.logits, token_masks(teacher.logits, self.tokens))}
        if o.aux_weight and student.aux_logits is not None and teacher.aux_logits is not None:
            masks = token_masks(teacher.aux_logits, self.tokens)
            terms["maskd_aux"] = o.weight * o.aux_weight * maskd_loss(student.aux_logits, teacher.aux_logits, masks)
        return terms
