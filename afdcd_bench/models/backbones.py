"""timm backbones dilated to output stride 8, with the taps that distillation needs."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn

from .weights import WeightsMismatch, fit_state_dict, read_state_dict

# Deep-stem ResNets of the released code: three 3x3 convs 3->64->64->128 in the stem.
# timm's resnet101s is exactly that net; for ResNet-18 timm has the options but no name.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18_deepstem": ("resnet18", {"stem_width": 64, "stem_type": "deep"}),
    "resnet101_deepstem": ("resnet101s", {}),
}

# Backbones the recipes use; any other timm name with features_only support also works.
KNOWN = ("resnet18", "resnet101", "mobilenetv2_100", "resnet18_deepstem", "resnet101_deepstem", "mobilenetv3_small_100",
         "mobilenetv3_large_100", "mobilevit_xxs")


class PretrainedWeightsError(RuntimeError):
    pass


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    if name in ALIASES:
        return ALIASES[name]
    if name not in timm.list_models():
        raise ValueError(
            f"unknown backbone {name!r}: not a timm model name nor one of {sorted(ALIASES)}; "
            f"the recipes use {KNOWN}"
        )
    return name, {}


def create_backbone(name: str, pretrained: bool | str = False, output_stride: int = 8,
                    out_indices: tuple[int, ...] = (3, 4)) -> nn.Module:
    """features_only timm model at output stride 8 returning [C3, C4] (32: undilated, the same
    weights, as classification pretraining runs them); out_indices (1, 2, 3, 4): C1..C4.

    pretrained: False (random), True (timm's own weights by name; needs a network), or the
    path of a local weights file: timm's layout (.safetensors or .pth, classifier optional) or
    a backbone written by `afdcd-bench import-released`. Local files are checked tensor by
    tensor: timm itself loads a features_only model non-strictly and would accept a wrong file.
    """
    timm_name, kwargs = resolve(name)
    common = dict(features_only=True, output_stride=output_stride, out_indices=tuple(out_indices), **kwargs)
    if pretrained is False or pretrained is None:
        return timm.create_model(timm_name, pretrained=False, **common)
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            from .fetch import missing_weights_hint

            hint = missing_weights_hint(path)
            raise PretrainedWeightsError(
                f"pretrained weights file not found: {path}. " + (hint + "." if hint else
                f"Give the path of a local {timm_name} ImageNet weights file (safetensors or .pth state dict in timm's "
                f"layout), or import the released backbone with `afdcd-bench import-released`.")
            )
        model = timm.create_model(timm_name, pretrained=False, **common)
        try:
            fit_state_dict(model, read_state_dict(path), f"weights file {path} does not fit backbone {name}")
        except WeightsMismatch as exc:
            raise PretrainedWeightsError(str(exc)) from exc
        return model
    if name in ALIASES and timm_name == "resnet18":
        raise PretrainedWeightsError(
            "timm has no ImageNet weights for the deep-stem ResNet-18: import the released "
            "resnet18-imagenet.pth with `afdcd-bench import-released` and point `pretrained` at it."
        )
    try:
        return timm.create_model(timm_name, pretrained=True, **common)
    except Exception as exc:  # network, hub or cache failures all end here
        raise PretrainedWeightsError(
            f"could not fetch timm's pretrained weights for {timm_name!r} ({type(exc).__name__}: {exc}). "
            f"Without a network, download them elsewhere and set model pretrained to the local file path "
            f"(e.g. `student.pretrained=/path/{timm_name}.safetensors`)."
        ) from exc


def weights_normalization(name: str, pretrained: bool | str = False) -> dict[str, Any]:
    """The input convention of the weights: an imported file says so in its JSON, else timm's."""
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        meta = Path(pretrained).with_suffix(".json")
        if meta.is_file():
            norm = json.loads(meta.read_text()).get("build_args", {}).get("normalization")
            if norm:
                return dict(norm)
    return timm_normalization(name)


def timm_normalization(name: str) -> dict[str, Any]:
    """The input convention timm's pretrained weights expect: RGB in [0, 1], mean/std."""
    timm_name, _ = resolve(name)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    mean = tuple(cfg.mean) if cfg is not None else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg is not None else (0.229, 0.224, 0.225)
    return {"mean": list(mean), "std": list(std), "bgr": False, "scale": 1.0}


# Released checkpoints: BGR, 0-255, minus the Caffe mean, no std.
CAFFE_NORMALIZATION = {
    "mean": [104.00698793, 116.66876762, 122.67891434],
    "std": [1.0, 1.0, 1.0],
    "bgr": True,
    "scale": 255.0,
}
