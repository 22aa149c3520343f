"""CIRKD: pixel-to-pixel distillation across the images of a group, and against class-wise
memories of teacher pixels and regions (projection head on the student's head feature).

The queues are run state outside the trained modules (methods/_class_queues.py); the entries of a
step come from every process (gathered), so a run does not depend on how its batch is split over
processes. docs/distillers.md, "CIRKD", says what differs from the release and why.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import ConfigError
from ..losses import cirkd_memory_kl, cirkd_minibatch_loss
from ..losses.ifvd import labels_at
from ..losses.task import as_float
from ._class_queues import PIXEL_ENQUEUE, ClassQueues, free_memory_bytes, queue_bytes
from .base import Component, check_option_ranges, register

ENQUEUE = ("after_step", "before_loss")
MAX_MEMORY_FRACTION = 0.5  # of the device's free memory, for the queues


@dataclass
class CIRKDOptions:
    minibatch_weight: float = 1.0
    pixel_weight: float = 0.1  # pixel-to-pixel against the pixel memory
    region_weight: float = 0.1  # pixel-to-region against the region memory
    tau: float = 0.1  # of the similarities
    temperature: float = 1.0  # of the memory terms' KL (T_c)
    pixel_queue: int = 20000  # entries per class
    region_queue: int = 2000
    pixel_contrasts: int = 4096  # sampled per step over all classes: floor(n / K) + 1 slots of each
    region_contrasts: int = 1024
    pixels_per_image: int = 16  # pixel entries a class adds per image
    # the mini-batch term pairs images within groups of this many consecutive images (released: the
    # 2 images of each GPU); must divide the per-device batch
    minibatch_images: int = 2
    pixel_enqueue: str = "class"  # "released": the released code's wrong pixel indices (see _class_queues)
    # "after_step": a step's entries are added after its optimiser step, so a step contrasts with earlier
    # images only and accumulation gives what a larger batch gives; "before_loss": as released
    enqueue: str = "after_step"


@register("cirkd")
class CrossImageRelational(Component):
    Options = CIRKDOptions
    reads = ("head",)
    terms = ("cirkd_batch", "cirkd_pixel", "cirkd_region")

    def __init__(self, options: CIRKDOptions, ctx):
        super().__init__(options, ctx)
        o = options
        cs, ct = ctx.student["head"], ctx.teacher["head"]
        if o.minibatch_weight and ctx.per_device_batch % o.minibatch_images:
            raise ValueError(f"method.cirkd.minibatch_images={o.minibatch_images} must divide the per-device batch "
                             f"{ctx.per_device_batch}: change the per-device batch or minibatch_images")
        self.queues = None
        if o.pixel_weight or o.region_weight:
            # trained with the student (its SGD and weight decay), as released
            self.projector = nn.Sequential(nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct), nn.ReLU(inplace=True),
                                           nn.Conv2d(ct, ct, 1, bias=False))
            need = queue_bytes(ctx.num_classes, o.pixel_queue, o.region_queue, ct)
            free = free_memory_bytes(torch.device(ctx.device))
            if free is not None and need > MAX_MEMORY_FRACTION * free:
                raise ValueError(
                    f"the CIRKD queues need {need / 2**30:.2f} GiB ({ctx.num_classes} classes x "
                    f"({o.pixel_queue} + {o.region_queue}) entries x {ct} floats) but {ctx.device} has "
                    f"{free / 2**30:.2f} GiB free (at most {MAX_MEMORY_FRACTION:.0%} may go to them): lower "
                    f"method.cirkd.pixel_queue / region_queue")
            self.queues = ClassQueues(ctx.num_classes, o.pixel_queue, o.region_queue, ct, o.pixels_per_image,
                                      seed=ctx.seed, device=ctx.device, pixel_enqueue=o.pixel_enqueue)
        self._contrasts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def check_recipe(cls, options, cfg, path):
        check_option_ranges(options, path)
        o = options
        for key in ("pixel_queue", "region_queue", "pixel_contrasts", "region_contrasts", "pixels_per_image",
                    "minibatch_images"):
            if getattr(o, key) < 1:
                raise ConfigError(f"{path}.{key} must be >= 1, got {getattr(o, key)}")
        k = cfg.num_classes
        for contrasts, queue in (("pixel_contrasts", "pixel_queue"), ("region_contrasts", "region_queue")):
            if getattr(o, contrasts) // k + 1 > getattr(o, queue):
                raise ConfigError(f"{path}.{contrasts}={getattr(o, contrasts)} samples {getattr(o, contrasts) // k + 1} "
                                  f"entries of each of {k} classes, more than {path}.{queue}={getattr(o, queue)}")
        if o.pixels_per_image > o.pixel_queue:
            raise ConfigError(f"{path}.pixels_per_image must not exceed {path}.pixel_queue")
        if o.pixel_enqueue not in PIXEL_ENQUEUE:
            raise ConfigError(f"{path}.pixel_enqueue must be one of {', '.join(PIXEL_ENQUEUE)}, got {o.pixel_enqueue!r}")
        if o.enqueue not in ENQUEUE:
            raise ConfigError(f"{path}.enqueue must be one of {', '.join(ENQUEUE)}, got {o.enqueue!r}")

    def weights(self):
        o = self.options
        return {"cirkd_batch": o.minibatch_weight, "cirkd_pixel": o.pixel_weight, "cirkd_region": o.region_weight}

    def run_state(self):
        return self.queues

    def state_bytes(self) -> int:
        return self.queues.nbytes if self.queues is not None else 0

    def forward(self, student, teacher, labels):
        return self._relational_terms(student.head, teacher.head, labels)

    def _minibatch_maps(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps the mini-batch term compares (CIRKDv2 pools large ones)."""
        return s, t

    def _relational_terms(self, s_head: torch.Tensor, t_head: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.options
        terms = {}
        if o.minibatch_weight:
            g, b = o.minibatch_images, s_head.shape[0]
            s_map, t_map = self._minibatch_maps(s_head, t_head)
            groups = [cirkd_minibatch_loss(s_map[i:i + g], t_map[i:i + g], o.tau) for i in range(0, b, g)]
            terms["cirkd_batch"] = o.minibatch_weight * torch.stack(groups).mean()
        if self.queues is None:
            return terms
        t = F.normalize(as_float(t_head.detach()), dim=1)
        lab = labels_at(labels, tuple(t.shape[-2:]))
        entries = (self.ctx.gather(t), self.ctx.gather(lab))  # every process's images, in process order
        if o.enqueue == "before_loss":
            self.queues.enqueue(*entries)
            self._contrasts = None
        else:
            self._pending.append(entries)
        if self._contrasts is None:  # once per step (before_loss: once per forward, as released)
            self._contrasts = self.queues.sample(o.pixel_contrasts, o.region_contrasts)
        pixel_bank, region_bank = self._contrasts
        valid = (lab >= 0) & (lab < self.ctx.num_classes)
        s = F.normalize(as_float(self.projector(s_head)), dim=1).permute(0, 2, 3, 1)[valid]
        t_a = t.permute(0, 2, 3, 1)[valid]
        # the mean over every process's anchors: each process divides its sum by the global count over
        # the process count (the gradient average over processes then gives the global mean)
        count = valid.sum().float()
        if self.ctx.num_processes > 1:
            count = self.ctx.reduce_mean(count)
        scale = 1.0 / count.clamp_min(1.0)
        if o.pixel_weight:
            terms["cirkd_pixel"] = o.pixel_weight * cirkd_memory_kl(s, t_a, pixel_bank, o.tau, o.temperature).sum() * scale
        if o.region_weight:
            terms["cirkd_region"] = o.region_weight * cirkd_memory_kl(s, t_a, region_bank, o.tau, o.temperature).sum() * scale
        return terms

    def after_step(self):
        if self.queues is not None and self.options.enqueue == "after_step":
            for entries in self._pending:
                self.queues.enqueue(*entries)
        self._pending.clear()
        self._contrasts = None
        return {}
