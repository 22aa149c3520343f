"""DeepLabV3, PSPNet and FCN (aux) heads as in the released Af-DCD/CIRKD networks.

Module names (aspp.b0..b4, project, block, psp.conv1..4, classifier) follow the released
checkpoints' key layout so that their head weights load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ASPPConv(nn.Module):
    def __init__(self, cin: int, cout: int, rate: int):
        super().__init__()
        self.block = conv_bn_relu(cin, cout, 3, rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ASPPPooling(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _resize(self.gap(x), tuple(x.shape[-2:]))


class ASPP(nn.Module):
    def __init__(self, cin: int, width: int, rates: tuple[int, int, int] = (12, 24, 36)):
        super().__init__()
        self.b0 = conv_bn_relu(cin, width)
        self.b1 = ASPPConv(cin, width, rates[0])
        self.b2 = ASPPConv(cin, width, rates[1])
        self.b3 = ASPPConv(cin, width, rates[2])
        self.b4 = ASPPPooling(cin, width)
        self.project = nn.Sequential(*conv_bn_relu(5 * width, width), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)]
        return self.project(torch.cat(branches, dim=1))


class DeepLabV3Head(nn.Module):
    def __init__(self, cin: int, num_classes: int, width: int):
        super().__init__()
        self.aspp = ASPP(cin, width)
        self.block = nn.Sequential(*conv_bn_relu(width, width, 3), nn.Dropout(0.1), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the feature before the 1x1 classifier, after its dropout as released)."""
        feature = self.block[:-1](self.aspp(x))
        return self.block[-1](feature), feature


class PyramidPooling(nn.Module):
    def __init__(self, cin: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        for i, _ in enumerate(bins, start=1):
            setattr(self, f"conv{i}", conv_bn_relu(cin, cin // 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        outs = [x]
        for i, b in enumerate(self.bins, start=1):
            outs.append(_resize(getattr(self, f"conv{i}")(F.adaptive_avg_pool2d(x, b)), size))
        return torch.cat(outs, dim=1)


class PSPHead(nn.Module):
    def __init__(self, cin: int, num_classes: int, width: int):
        super().__init__()
        self.psp = PyramidPooling(cin)
        self.block = nn.Sequential(*conv_bn_relu(2 * cin, width, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the feature before the 1x1 classifier, after its dropout as released)."""
        feature = self.block(self.psp(x))
        return self.classifier(feature), feature


class FCNHead(nn.Module):
    """Aux head on C3: conv3x3 to C3/4 + BN + ReLU + Dropout(0.1) + 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        mid = cin // 4
        self.block = nn.Sequential(*conv_bn_relu(cin, mid, 3), nn.Dropout(0.1), nn.Conv2d(mid, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


HEADS = {"deeplabv3": DeepLabV3Head, "pspnet": PSPHead}


def default_head_width(arch: str, channels: int) -> int:
    """Released widths: DeepLabV3 256 on 2048 ch, PSPNet 512 on 2048 ch; 128 for narrow backbones."""
    if channels >= 2048:
        return 256 if arch == "deeplabv3" else 512
    return 128
