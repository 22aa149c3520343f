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


class UPerNetHead(nn.Module):
    """UPerNet as CIRKDv2 releases it (models/upernet.py at dab64db): a pyramid pooling module on C4
    (each pooled map upsampled, then 1x1 to 512 + BN + ReLU; concatenated with C4; 3x3 to `width`),
    an FPN over C1..C3 (1x1 laterals + BN + ReLU, top-down sums, 3x3 + BN + ReLU outputs), the four
    levels upsampled to C1's size and fused by a 3x3 stride-2 conv + BN + ReLU (the head feature,
    no dropout) before the 1x1 classifier: logits at 1/8 from C1 at 1/4. width 128 is the release's
    `upernet_lite` (the CIRKDv2 student), 512 its `upernet`. Upsampling here is align_corners=False."""

    POOLED = 512  # the pooling branches' width, whatever `width`

    def __init__(self, channels: list[int], num_classes: int, width: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        *lower, top = channels
        self.bins = bins
        self.ppm_conv = nn.ModuleList([conv_bn_relu(top, self.POOLED) for _ in bins])
        self.ppm_last_conv = conv_bn_relu(top + len(bins) * self.POOLED, width, 3)
        self.fpn_in = nn.ModuleList([conv_bn_relu(c, width) for c in lower])
        self.fpn_out = nn.ModuleList([nn.Sequential(conv_bn_relu(width, width, 3)) for _ in lower])
        fuse = conv_bn_relu(len(channels) * width, width, 3)
        fuse[0].stride = (2, 2)
        self.conv_last = nn.Sequential(fuse, nn.Conv2d(width, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the fused feature before the classifier)."""
        top = features[-1]
        size = tuple(top.shape[-2:])
        pooled = [conv(_resize_free(F.adaptive_avg_pool2d(top, b), size)) for b, conv in zip(self.bins, self.ppm_conv)]
        f = self.ppm_last_conv(torch.cat([top, *pooled], dim=1))
        levels = [f]
        for i in reversed(range(len(features) - 1)):
            lateral = self.fpn_in[i](features[i])
            f = lateral + _resize_free(f, tuple(lateral.shape[-2:]))
            levels.append(self.fpn_out[i](f))
        levels.reverse()
        size = tuple(levels[0].shape[-2:])
        fused = torch.cat([levels[0], *(_resize_free(x, size) for x in levels[1:])], dim=1)
        feature = self.conv_last[0](fused)
        return self.conv_last[1](feature), feature


def _resize_free(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


HEADS = {"deeplabv3": DeepLabV3Head, "pspnet": PSPHead}
MULTI_LEVEL_HEADS = {"upernet": UPerNetHead}  # heads that read every stage C1..C4


def default_head_width(arch: str, channels: int) -> int:
    """Released widths: DeepLabV3 256 on 2048 ch, PSPNet 512 on 2048 ch; 128 for narrow backbones
    (and UPerNet's lite variant, CIRKDv2's student)."""
    if channels >= 2048 and arch in HEADS:
        return 256 if arch == "deeplabv3" else 512
    return 128
