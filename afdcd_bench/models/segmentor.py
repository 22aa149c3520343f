"""Segmentation networks by name: a timm backbone (OS 8) + DeepLabV3/PSPNet/UPerNet head + aux head,
or SegFormer (models/segformer.py)."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn

from .backbones import create_backbone, weights_normalization
from .heads import HEADS, MULTI_LEVEL_HEADS, FCNHead, default_head_width


class SegmentorOutput(NamedTuple):
    """The outputs a method may read (methods/base.py names them in `reads`)."""

    logits: torch.Tensor  # (B, K, H/8, W/8)
    aux_logits: torch.Tensor | None  # (B, K, H/8, W/8) or None
    features: torch.Tensor  # C4, the last backbone stage: the map Af-DCD distills
    c3: torch.Tensor | None = None  # the stage before (the aux head's input)
    head: torch.Tensor | None = None  # the head's feature before its 1x1 classifier (SKD, IFVD, CWD)


OUTPUTS = SegmentorOutput._fields


class Segmentor(nn.Module):
    def __init__(
        self,
        arch: str,
        backbone: str,
        num_classes: int,
        pretrained: bool | str = False,
        aux: bool | None = None,
        head_width: int | None = None,
        normalization: dict[str, Any] | None = None,
    ):
        super().__init__()
        if arch not in HEADS and arch not in MULTI_LEVEL_HEADS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted([*HEADS, *MULTI_LEVEL_HEADS, 'segformer'])}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.multi_level = arch in MULTI_LEVEL_HEADS
        self.backbone = create_backbone(backbone, pretrained, out_indices=(1, 2, 3, 4) if self.multi_level else (3, 4))
        channels = self.backbone.feature_info.channels()
        c3, c4 = channels[-2:]
        if aux is None:
            aux = backbone.startswith("resnet")
        width = head_width or default_head_width(arch, c4)
        self.head = MULTI_LEVEL_HEADS[arch](channels, num_classes, width) if self.multi_level else HEADS[arch](c4, num_classes, width)
        self.auxlayer = FCNHead(c3, num_classes) if aux else None
        self.output_channels: dict[str, int | None] = {
            "logits": int(num_classes), "aux_logits": int(num_classes) if aux else None, "features": c4, "c3": c3,
            "head": int(width),
        }
        strides = self.backbone.feature_info.reduction()
        top = strides[0] * 2 if self.multi_level else strides[-1]  # UPerNet fuses at C1's size with a stride-2 conv
        # each output's size as a fraction of the input's: a method that compares a student's map with
        # its teacher's needs them at one size (methods/base.check_reads)
        self.output_strides: dict[str, int | None] = {"logits": top, "aux_logits": strides[-2] if aux else None,
                                                      "features": strides[-1], "c3": strides[-2], "head": top}
        self.num_classes = int(num_classes)
        # Everything needed to rebuild the net (weights come from the checkpoint, not the hub).
        self.build_args: dict[str, Any] = {
            "arch": arch,
            "backbone": backbone,
            "num_classes": int(num_classes),
            "aux": bool(aux),
            "head_width": int(width),
            "normalization": normalization or weights_normalization(backbone, pretrained),
        }

    def forward(self, x: torch.Tensor) -> SegmentorOutput:
        stages = self.backbone(x)
        c3, c4 = stages[-2:]
        aux = self.auxlayer(c3) if self.auxlayer is not None else None
        logits, head = self.head(stages if self.multi_level else c4)
        return SegmentorOutput(logits, aux, c4, c3, head)


def build_segmentor(
    arch: str,
    backbone: str,
    num_classes: int,
    pretrained: bool | str = False,
    aux: bool | None = None,
    head_width: int | None = None,
    normalization: dict[str, Any] | None = None,
) -> nn.Module:
    """aux=None: an FCN aux head on C3 for ResNets, none for other backbones (MobileNetV2).
    arch "segformer": a MiT encoder (backbone mit_b0..mit_b5) and its all-MLP decoder (models/segformer.py)."""
    if arch == "segformer":
        from .segformer import MIT, SegFormer

        if aux:
            raise ValueError("segformer has no aux head (aux must be false)")
        if head_width is not None and backbone in MIT and head_width != MIT[backbone][2]:
            raise ValueError(f"segformer-{backbone}: the decoder is {MIT[backbone][2]} wide, not {head_width}")
        return SegFormer(backbone, num_classes, pretrained, normalization)
    return Segmentor(arch, backbone, num_classes, pretrained, aux, head_width, normalization)
