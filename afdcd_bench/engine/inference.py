"""Whole-image and sliding-window inference, optionally multi-scale with flip."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import EvalConfig
from ..losses import upsample_to


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return upsample_to(model(x).logits.float(), tuple(x.shape[-2:]))


def slide_logits(model: nn.Module, x: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Average of window predictions; the image is zero-padded up to one window where smaller."""
    _, _, h, w = x.shape
    wh, ww = window
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hh, wwid = x.shape[-2:]
    out = None
    count = torch.zeros(1, 1, hh, wwid, device=x.device)
    ys = list(range(0, max(hh - wh, 0) + 1, stride[0]))
    xs = list(range(0, max(wwid - ww, 0) + 1, stride[1]))
    if ys[-1] + wh < hh:
        ys.append(hh - wh)
    if xs[-1] + ww < wwid:
        xs.append(wwid - ww)
    for y in ys:
        for x0 in xs:
            crop = _logits(model, x[..., y : y + wh, x0 : x0 + ww])
            if out is None:
                out = torch.zeros(x.shape[0], crop.shape[1], hh, wwid, device=x.device)
            out[..., y : y + wh, x0 : x0 + ww] += crop
            count[..., y : y + wh, x0 : x0 + ww] += 1
    return (out / count)[..., :h, :w]


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    """Class scores (B, K, H, W) at the image's own size."""
    h, w = image.shape[-2:]
    total = None
    for scale in cfg.scales:
        x = image if scale == 1.0 else F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=True)
        views = [False, True] if cfg.flip else [False]
        for flip in views:
            xi = x.flip(-1) if flip else x
            if cfg.mode == "slide":
                if not cfg.crop_size:
                    raise ValueError("eval.mode=slide needs eval.crop_size (the window)")
                stride = cfg.stride or [max(1, c * 2 // 3) for c in cfg.crop_size]
                logits = slide_logits(model, xi, tuple(cfg.crop_size), tuple(stride))
            elif cfg.mode == "whole":
                logits = _logits(model, xi)
            else:
                raise ValueError(f"unknown eval.mode {cfg.mode!r}; expected whole or slide")
            if flip:
                logits = logits.flip(-1)
            probs = upsample_to(logits, (h, w)).softmax(1) if len(cfg.scales) > 1 or cfg.flip else upsample_to(logits, (h, w))
            total = probs if total is None else total + probs
    return total
