"""CIRKDv2: CIRKD's pixel and region relations plus relations between channels, on the student's
head feature after a self-attention context block, with a FitNet term (winycg/CIRKD at dab64db,
`train_cirkdv2.py`, `losses/cirkd_channel.py`, `losses/gcn.py`).

Channel terms: each channel's map, averaged over 4x4 patches, is a unit vector over positions; the
student's passes a projection head (1x1 conv, BN, ReLU, 1x1 conv) to the teacher's channels. A
mini-batch term relates channels across the images of a group, a memory term relates them to a
queue of teacher channel vectors, and "channel KD" regresses each projected channel onto the
teacher's. docs/distillers.md, "CIRKDv2", lists what differs from the release and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import ConfigError
from ..losses import channel_vectors, cirkd_channel_batch_loss, cirkd_memory_kl, fitnet_loss
from ..losses.cirkd import patch_means
from ._channel_queue import ChannelQueue
from .base import RunStates, register
from .cirkd import CIRKDOptions, CrossImageRelational


@dataclass
class CIRKDv2Options(CIRKDOptions):
    fitnet_weight: float = 1.0  # the release's lambda_fitnet: 1 or 10 by pair (read each script)
    # the self-attention block on the student's head feature that every feature term reads; the
    # release applies it to its CNN students only (its SegFormer trainer has it commented out)
    context: bool = True
    channel_batch_weight: float = 1.0
    channel_memory_weight: float = 0.1
    channel_kd_weight: float = 100.0
    channel_pool: int = 4  # patch side of the channel vectors' average pooling
    channel_queue: int = 10000  # entries
    channel_contrasts: int = 2048  # sampled per step
    channel_per_step: int = 256  # entries a step adds (over every process's images)
    # the mini-batch pixel term pools maps of at least this many rows and columns by 4 (as released;
    # 0: never), which a SegFormer's 1/4-stride head feature at a 1024 crop reaches
    minibatch_pool_from: int = 256


class ContextBlock(nn.Module):
    """Self-attention over positions at half the width, its output concatenated with the input and
    fused back to the input's width (1x1 convs, BN, ReLU): the release's "GCN"."""

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 2
        self.query = nn.Conv2d(channels, inner, 1, bias=False)
        self.key = nn.Conv2d(channels, inner, 1, bias=False)
        self.value = nn.Conv2d(channels, inner, 1, bias=False)
        self.expand = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (f(x).flatten(2) for f in (self.query, self.key, self.value))  # (B, C/2, HW)
        attn = torch.softmax(q.transpose(1, 2) @ k * q.shape[1] ** -0.5, dim=-1)  # (B, HW queries, HW keys)
        context = (attn @ v.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        return self.fuse(torch.cat([x, self.expand(context)], dim=1))


@register("cirkdv2")
class CrossImageRelationalV2(CrossImageRelational):
    Options = CIRKDv2Options
    reads = ("head",)
    terms = ("cirkd_batch", "cirkd_pixel", "cirkd_region", "cirkd_fitnet", "cirkd_channel_batch", "cirkd_channel_memory",
             "cirkd_channel_kd")

    def __init__(self, options: CIRKDv2Options, ctx):
        super().__init__(options, ctx)
        o = options
        cs, ct = ctx.student["head"], ctx.teacher["head"]
        self.context = ContextBlock(cs) if o.context else None
        self.fitnet_adapter = nn.Conv2d(cs, ct, 1, bias=False) if o.fitnet_weight else None
        self.channel_projector = None
        self.channel_queue = None
        if o.channel_batch_weight or o.channel_memory_weight or o.channel_kd_weight:
            self.channel_projector = nn.Sequential(nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct), nn.ReLU(inplace=True),
                                                   nn.Conv2d(ct, ct, 1, bias=False))
        if o.channel_memory_weight:
            # its width: the pooled positions of the head map at the crop size, the student's (the
            # teacher's is that size, or brought to it by method.resize_teacher). The release computes
            # h*w/16 from the crop, which fails where the pooling's last patch is partial
            stride = ctx.student_strides.get("head") or 8
            h, w = (math.ceil(math.ceil(n / stride) / o.channel_pool) for n in ctx.crop_size)
            self.channel_queue = ChannelQueue(o.channel_queue, h * w, o.channel_per_step, seed=ctx.seed + 1,
                                              device=ctx.device)
        self._channel_contrasts: torch.Tensor | None = None
        self._channel_pending: list[torch.Tensor] = []

    @classmethod
    def check_recipe(cls, options, cfg, path):
        super().check_recipe(options, cfg, path)
        o = options
        for key in ("channel_pool", "channel_queue", "channel_contrasts", "channel_per_step"):
            if getattr(o, key) < 1:
                raise ConfigError(f"{path}.{key} must be >= 1, got {getattr(o, key)}")
        if o.minibatch_pool_from < 0:
            raise ConfigError(f"{path}.minibatch_pool_from must be >= 0, got {o.minibatch_pool_from}")
        if o.channel_per_step > o.channel_queue:
            raise ConfigError(f"{path}.channel_per_step={o.channel_per_step} exceeds {path}.channel_queue={o.channel_queue}")

    def weights(self):
        o = self.options
        return {**super().weights(), "cirkd_fitnet": o.fitnet_weight, "cirkd_channel_batch": o.channel_batch_weight,
                "cirkd_channel_memory": o.channel_memory_weight, "cirkd_channel_kd": o.channel_kd_weight}

    def run_state(self):
        states = {k: v for k, v in (("classes", self.queues), ("channels", self.channel_queue)) if v is not None}
        return RunStates(states) if states else None

    def state_bytes(self) -> int:
        return super().state_bytes() + (self.channel_queue.nbytes if self.channel_queue is not None else 0)

    def _minibatch_maps(self, s, t):
        n = self.options.minibatch_pool_from
        if n and s.shape[-2] >= n and s.shape[-1] >= n:
            return patch_means(s, 4), patch_means(t, 4)
        return s, t

    def forward(self, student, teacher, labels):
        o = self.options
        s, t = student.head, teacher.head.detach()
        if self.context is not None:
            s = self.context(s)
        terms = self._relational_terms(s, t, labels)
        if self.fitnet_adapter is not None:
            terms["cirkd_fitnet"] = o.fitnet_weight * fitnet_loss(self.fitnet_adapter(s), t)
        if self.channel_projector is None:
            return terms
        s_vec = channel_vectors(self.channel_projector(patch_means(s, o.channel_pool)))  # (B, C_t, positions)
        t_vec = channel_vectors(t, o.channel_pool)
        if o.channel_batch_weight:
            g, b = o.minibatch_images, s_vec.shape[0]
            groups = [cirkd_channel_batch_loss(s_vec[i:i + g], t_vec[i:i + g], o.tau) for i in range(0, b, g)]
            terms["cirkd_channel_batch"] = o.channel_batch_weight * torch.stack(groups).mean()
        s_rows, t_rows = s_vec.flatten(0, 1), t_vec.flatten(0, 1)
        if o.channel_kd_weight:
            terms["cirkd_channel_kd"] = o.channel_kd_weight * F.mse_loss(s_rows, t_rows)
        if self.channel_queue is not None:
            entries = self.ctx.gather(t_rows)
            if o.enqueue == "before_loss":
                self.channel_queue.enqueue(entries)
                self._channel_contrasts = None
            else:
                self._channel_pending.append(entries)
            if self._channel_contrasts is None:
                self._channel_contrasts = self.channel_queue.sample(o.channel_contrasts)
            kl = cirkd_memory_kl(s_rows, t_rows, self._channel_contrasts, o.tau, o.temperature)
            terms["cirkd_channel_memory"] = o.channel_memory_weight * kl.mean()
        return terms

    def after_step(self):
        out = super().after_step()
        if self.channel_queue is not None and self.options.enqueue == "after_step":
            for entries in self._channel_pending:
                self.channel_queue.enqueue(entries)
        self._channel_pending.clear()
        self._channel_contrasts = None
        return out
