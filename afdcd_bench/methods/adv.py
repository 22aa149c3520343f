"""The holistic (adversarial) term of SKD, also added to IFVD and CWD by the released scripts.

A discriminator scores logit maps; the student is trained to raise its score on the student's
logits, and the discriminator (own Adam, constant lr) takes one hinge-loss step after each
student step on that step's teacher and (detached) student logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config.checks import positive, tap_stride
from ..config.schema import ConfigError
from ..losses import Discriminator, discriminator_hinge, generator_hinge
from ..losses.skd import SPECTRAL_NORMS
from .base import Component, OwnPart, check_option_ranges, register


@dataclass
class AdvOptions:
    weight: float = 0.001  # lambda_adv: the student's (generator's) term
    d_weight: float = 0.1  # lambda_d: scales the discriminator's loss (with Adam, it matters only through eps)
    lr: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8  # Adam's
    # release: the SKD release's power iteration (v then u, no warm-up, every forward); torch: torch's
    # parametrization (u then v, 15 warm-up iterations, none in eval mode)
    spectral_norm: str = "release"


@register("adv")
class Adversarial(Component):
    Options = AdvOptions
    reads = ("logits",)
    terms = ("adv",)

    def __init__(self, options: AdvOptions, ctx):
        super().__init__(options, ctx)
        betas = tuple(options.betas)
        self._own["discriminator"] = OwnPart(
            Discriminator(ctx.num_classes, options.spectral_norm), lambda params: torch.optim.Adam(params, lr=options.lr, betas=betas, eps=options.eps))
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        positive(options.eps, f"{path}.eps")
        if len(options.betas) != 2 or not all(0 <= b < 1 for b in options.betas):
            raise ConfigError(f"{path}.betas must be two numbers in [0, 1), got {options.betas!r}")
        if options.spectral_norm not in SPECTRAL_NORMS:
            raise ConfigError(f"{path}.spectral_norm must be one of {', '.join(SPECTRAL_NORMS)}, got {options.spectral_norm!r}")
        stride = tap_stride(cfg.student.arch, "logits")
        sides = [-(-s // stride) for s in cfg.data.crop_size]
        if min(sides) < Discriminator.MIN_SIZE:
            raise ConfigError(
                f"{path}: the discriminator needs logit maps of at least {Discriminator.MIN_SIZE}x{Discriminator.MIN_SIZE} "
                f"(data.crop_size >= {Discriminator.MIN_SIZE * stride} a side); data.crop_size {cfg.data.crop_size} "
                f"gives {sides[0]}x{sides[1]}"
            )

    @property
    def discriminator(self) -> Discriminator:
        return self._own["discriminator"].module

    def weights(self):
        return {"adv": self.options.weight, "d": self.options.d_weight}

    def forward(self, student, teacher, labels):
        d = self.discriminator.requires_grad_(False)  # the student's term trains the student only
        self._pending.append((student.logits.detach(), teacher.logits.detach()))
        return {"adv": self.options.weight * generator_hinge(d(student.logits))}

    def after_step(self):
        if not self._pending:
            return {}
        part = self._own["discriminator"]
        d = part.module.requires_grad_(True)
        part.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self._pending[0][0].device)
        for s, t in self._pending:  # one per accumulated micro-batch
            loss = self.options.d_weight * discriminator_hinge(d(t), d(s)) / len(self._pending)
            loss.backward()
            total += loss.detach()
        self._pending.clear()
        if self.ctx.num_processes > 1:
            for p in d.parameters():
                if p.grad is not None:
                    p.grad = self.ctx.reduce_mean(p.grad)
        part.optimizer.step()
        return {"d": float(total)}
