"""Params and multiply-adds of a segmentor, counted on the meta device (no memory, no compute).

Two counts: the true multiply-adds (torch.utils.flop_counter, FLOPs / 2), and the figure the
papers print. Their counter computes a conv's output size as if dilation were 1
((H + 2p - k) / s + 1), so every dilated conv with padding = dilation is charged for a larger
output than it has; this reproduces the printed 2371.7G / 572.0G / 128.9G at 1024x2048 exactly
(tests/test_models.py), where the true counts are about 2063G / 517G / 107G. Both counts
include the aux head, as the printed ones do.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .segmentor import build_segmentor


def _meta_model(build: dict[str, Any]) -> nn.Module:
    with torch.device("meta"):
        return build_segmentor(pretrained=False, **build).eval()


def true_macs(model: nn.Module, size: tuple[int, int]) -> int:
    x = torch.empty(1, 3, *size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def printed_macs(model: nn.Module, size: tuple[int, int]) -> int:
    """Conv and linear multiply-adds as the papers' counter computes them (dilation ignored)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal total
        h, w = inputs[0].shape[-2:]
        (kh, kw), (ph, pw), (sh, sw) = m.kernel_size, m.padding, m.stride
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        total += oh * ow * m.out_channels * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal total
        total += inputs[0].numel() * m.out_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, *size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total


def model_complexity(arch: str, backbone: str, num_classes: int, size: tuple[int, int], aux: bool | None = None,
                     head_width: int | None = None) -> dict[str, Any]:
    """Params and both multiply-add counts of one network at one input size."""
    model = _meta_model({"arch": arch, "backbone": backbone, "num_classes": num_classes, "aux": aux, "head_width": head_width})
    return {
        "model": f"{arch}-{backbone}",
        "input": f"{size[0]}x{size[1]}",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs": true_macs(model, size) / 1e9,
        "gmacs_printed_style": printed_macs(model, size) / 1e9,
    }
