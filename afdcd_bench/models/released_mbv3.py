"""MobileNetV3 files in the CIRKDv2 release's layout (OpenMMLab's `mobilenet_v3_small-47085aa1.pth`
and `mobilenet_v3_large-bc2c3fd3.pth`, torchvision's ImageNet weights renamed for mmsegmentation)
mapped onto timm's `mobilenetv3_small_100` / `mobilenetv3_large_100`.

The layout: `layer0` (stem conv + bn), `layer1..layerN` inverted residuals (`expand_conv`,
`depthwise_conv`, `se.conv1`, `se.conv2`, `linear_conv`, each a conv with its bn), then one
1x1 conv + bn (`layer12` small, `layer16` large), optionally under `backbone.` or `state_dict`.
Those tensors come in the order of timm's, one for one, so they are mapped by that order and
checked by shape; a missing, extra or misshapen tensor is refused. The release loads them with
strict=False (a renamed key would silently stay random); here nothing is skipped silently.
"""
from __future__ import annotations

import re

import torch

from .weights import WeightsMismatch, is_bn_counter, map_by_order, without_prefix

# inverted-residual layers after the stem (models/base_models/mobilenetv3.py at dab64db)
LAYERS = {"mobilenetv3_small_100": 11, "mobilenetv3_large_100": 15}
_PARTS = ("expand_conv", "depthwise_conv", "se.conv1", "se.conv2", "linear_conv")
_TENSORS = ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
_KEY = re.compile(r"layer(\d+)\.(?:(" + "|".join(re.escape(p) for p in _PARTS) + r")\.)?(" + "|".join(re.escape(t) for t in _TENSORS) + r")$")


def is_mmseg_mobilenetv3(state: dict[str, torch.Tensor]) -> bool:
    keys = without_prefix(state)
    return "layer0.conv.weight" in keys and any(".depthwise_conv.conv.weight" in k for k in keys)


def infer_mobilenetv3(state: dict[str, torch.Tensor]) -> str:
    """Small or large, from the index of the last layer (the 1x1 conv after the inverted residuals)."""
    last = max(int(m.group(1)) for k in without_prefix(state) if (m := re.match(r"layer(\d+)\.", k)))
    for name, layers in LAYERS.items():
        if last == layers + 1:
            return name
    raise WeightsMismatch(f"a MobileNetV3 of {last - 1} inverted residuals: neither small (11) nor large (15)")


def _order(key: str) -> tuple[int, int, int]:
    m = _KEY.match(key)
    if m is None:
        raise WeightsMismatch(f"{key}: not a tensor of the release's MobileNetV3 layout")
    layer, part, tensor = int(m.group(1)), m.group(2), m.group(3)
    return layer, _PARTS.index(part) if part else -1, _TENSORS.index(tensor)


def to_timm_mobilenetv3(state: dict[str, torch.Tensor], timm_keys: list[str]) -> dict[str, torch.Tensor]:
    """The release's tensors under timm's names (timm_keys: the backbone's state-dict keys in order);
    BN step counters are left out on both sides. Shapes are checked when the tensors are fitted."""
    plain = without_prefix(state)
    src = sorted((k for k in plain if not is_bn_counter(k)), key=_order)
    return map_by_order(plain, src, timm_keys, "the release's MobileNetV3")
