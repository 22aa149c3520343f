"""MobileViT-XXS in the CIRKDv2 release's file (mmpretrain's
`mobilevit-xxsmall_3rdparty_in1k_20221018-77835605.pth`, Apple's ImageNet weights converted by
OpenMMLab) mapped onto timm's `mobilevit_xxs`.

The layout: `stem`, `layers.0..4` (inverted residuals `conv.0..2`; MobileViT blocks with
`local_rep`, `global_rep` transformer layers (ln1, attn.qkv, attn.proj, ln2, ffn) and its final
LayerNorm, `conv_proj`, `conv_fusion`), `conv_1x1_exp`, the ImageNet classifier under `head.`,
all under `backbone.` or not, plain or under `state_dict`. Its tensors come in the order and
shapes of timm's (a state dict keeps its modules' order), so they are mapped by that order and
checked by shape; the classifier is dropped and listed. The release's own converter renames
`attn.qkv` / `attn.proj` to nn.MultiheadAttention's `in_proj_*` / `out_proj`: the same tensors.
mmpretrain trained these weights on BGR images scaled to [0, 1] without mean or std (its config:
mean 0, std 255, to_rgb False), which MOBILEVIT_NORMALIZATION says.
"""
from __future__ import annotations

import torch

from .weights import is_bn_counter, map_by_order, without_prefix

MOBILEVIT_NORMALIZATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "bgr": True, "scale": 1.0}
HEAD_PREFIX = "head."


def is_mmpretrain_mobilevit(state: dict[str, torch.Tensor]) -> bool:
    keys = without_prefix(state)
    return any(".local_rep." in k for k in keys) and any(".global_rep." in k for k in keys) and "stem.conv.weight" in keys


def to_timm_mobilevit(state: dict[str, torch.Tensor], timm_keys: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the backbone's tensors under timm's names, the classifier keys dropped). BN step counters
    are left out on both sides; shapes are checked when the tensors are fitted."""
    plain = without_prefix(state)
    head = [k for k in plain if k.startswith(HEAD_PREFIX)]
    src = [k for k in plain if k not in head and not is_bn_counter(k)]
    return map_by_order(plain, src, timm_keys, "the release's MobileViT"), sorted(head)
