"""Import of the authors' released weights (ImageNet backbones and Af-DCD/CIRKD checkpoints).

The released files are plain torch pickles of tensors, read with torch.load(weights_only=True)
so nothing but tensors is ever unpickled. Key layout (docs/method.md): backbone under `pretrained.`
with the deep stem named conv1/bn1, conv2/bn2, conv3/bn3; heads under `head.` and `auxlayer.`
with the module names of heads.py. timm's deep stem is one Sequential, hence STEM_RENAMES;
MobileNetV2's names differ throughout but its tensors come in timm's order and shapes, so it is
mapped by position and checked by shape. Imported weights carry the released input convention
(BGR, 0-255, Caffe mean, no std) in their build arguments, so the data pipeline follows them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .backbones import CAFFE_NORMALIZATION, create_backbone, timm_normalization
from .checkpoint import save_segmentor, save_state_dict
from .released_mbv3 import infer_mobilenetv3, is_mmseg_mobilenetv3, to_timm_mobilenetv3
from .released_mobilevit import MOBILEVIT_NORMALIZATION, is_mmpretrain_mobilevit, to_timm_mobilevit
from .released_mit import IMAGENET_HEAD, decoder_names, encoder_names, infer_mit, is_nvlabs_mit
from .segformer import MIT_NORMALIZATION, SegFormer
from .segmentor import build_segmentor
from .weights import (CLASSIFIER_PREFIXES, WeightsMismatch, fit_state_dict, is_bn_counter, map_by_order, read_state_dict,
                      sha256_file)

STEM_RENAMES = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6", "bn3": "bn1"}
# Public MobileNetV2 ImageNet files in the released layout also hold the classification head the
# segmentation net does not have: a 1x1 conv to 1280 channels with its BN (features.18) and the
# Linear classifier. The release's loader keeps only its net's keys; the import drops exactly these.
MOBILENET_HEAD_PREFIXES = ("features.18.", "classifier.")
# (blocks in layer3, bottleneck blocks) -> ResNet depth
RESNET_DEPTHS = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101, (36, True): 152}


@dataclass
class ImportReport:
    kind: str  # "backbone" or "segmentor"
    backbone: str
    source: str
    sha256: str
    tensors: int
    ignored: list[str] = field(default_factory=list)  # ImageNet classifier tensors dropped on purpose
    build_args: dict[str, Any] = field(default_factory=dict)


def infer_backbone(state: dict[str, torch.Tensor]) -> str:
    """Our backbone name for released backbone tensors (keys without the `pretrained.` prefix)."""
    if any(k.startswith("layer3.") for k in state):
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
        depth = RESNET_DEPTHS.get((len(blocks), "layer3.0.conv3.weight" in state))
        if depth is None:
            raise WeightsMismatch(f"unrecognised ResNet: {len(blocks)} blocks in layer3")
        if "conv2.weight" not in state:
            return f"resnet{depth}"
        if depth not in (18, 101):
            raise WeightsMismatch(f"deep-stem ResNet-{depth}: only the deep-stem ResNet-18 and -101 are supported")
        return f"resnet{depth}_deepstem"
    count = sum(1 for k, v in state.items() if not _counter(k, v) and not k.startswith(CLASSIFIER_PREFIXES + MOBILENET_HEAD_PREFIXES))
    target = sum(1 for k in create_backbone("mobilenetv2_100").state_dict() if not is_bn_counter(k))
    if count == target:
        return "mobilenetv2_100"
    raise WeightsMismatch(f"cannot tell the backbone (no ResNet layers; {count} tensors, MobileNetV2 has {target}): pass --backbone")


def _counter(key: str, value: torch.Tensor) -> bool:
    """A BN step counter, recognised by name or, under foreign names, as a 0-d integer."""
    return is_bn_counter(key) or (value.ndim == 0 and not value.is_floating_point())


def _rename_stem(key: str) -> str:
    first, _, rest = key.partition(".")
    return f"{STEM_RENAMES[first]}.{rest}" if first in STEM_RENAMES else key


def to_timm_names(state: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """Released backbone tensors renamed to the keys of our features-only timm backbone."""
    if backbone.endswith("_deepstem"):
        return {_rename_stem(k): v for k, v in state.items()}
    if backbone.startswith("resnet"):
        return dict(state)
    kept = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES + MOBILENET_HEAD_PREFIXES)}
    src = [k for k, v in kept.items() if not _counter(k, v)]
    return map_by_order(kept, src, list(create_backbone(backbone).state_dict()), f"the released {backbone}")


def _head_shape(heads: dict[str, torch.Tensor], arch: str) -> tuple[int, int]:
    try:
        if arch == "deeplabv3":
            return int(heads["head.block.4.weight"].shape[0]), int(heads["head.aspp.b0.0.weight"].shape[0])
        if arch == "upernet":
            return int(heads["head.conv_last.1.weight"].shape[0]), int(heads["head.conv_last.0.0.weight"].shape[0])
        return int(heads["head.classifier.weight"].shape[0]), int(heads["head.block.0.weight"].shape[0])
    except KeyError as exc:
        raise WeightsMismatch(f"the {arch} head has no {exc.args[0]}: not a released {arch} checkpoint") from exc


def import_released(src: str | os.PathLike, dst: str | os.PathLike, backbone: str | None = None, arch: str | None = None) -> ImportReport:
    """Convert a released ImageNet backbone or teacher/student checkpoint into our format at dst.

    A segmentation checkpoint becomes a model checkpoint (load_segmentor rebuilds it, and it can
    be a recipe's teacher.checkpoint); a backbone becomes a file for `student.pretrained=PATH`.
    """
    released = read_state_dict(src)
    digest = sha256_file(src)
    meta = {"source": os.fspath(src), "source_sha256": digest, "imported_from": "released"}
    if is_nvlabs_mit(released):
        return _import_mit(released, src, dst, digest, meta, backbone)
    if (mobile := _release_mobile(released)) is not None:
        return _import_mobile(mobile, released, src, dst, digest, meta, backbone)
    is_segmentor = any(k.startswith(("pretrained.", "head.")) for k in released)
    if not is_segmentor:
        backbone = backbone or infer_backbone(released)
        net = create_backbone(backbone)
        head = sorted(k for k in released if k.startswith(MOBILENET_HEAD_PREFIXES)) if backbone.startswith("mobilenet") else []
        renamed = {k: v for k, v in to_timm_names(released, backbone).items() if k not in head}
        ignored = sorted(set(head) | set(fit_state_dict(net, renamed, f"{src} does not fit backbone {backbone}")))
        build_args = {"backbone": backbone, "normalization": dict(CAFFE_NORMALIZATION)}
        save_state_dict(net.state_dict(), dst, build_args, {"kind": "backbone", **meta, "ignored": ignored})
        return ImportReport("backbone", backbone, os.fspath(src), digest, len(released), ignored, build_args)

    trunk = {k.removeprefix("pretrained."): v for k, v in released.items() if k.startswith("pretrained.")}
    heads = {k: v for k, v in released.items() if not k.startswith("pretrained.")}
    mobile = _release_mobile(trunk)  # CIRKDv2's students: the release's own MobileNetV3 / MobileViT under pretrained.
    if mobile and backbone and backbone != mobile[0]:
        raise WeightsMismatch(f"{src} holds a {mobile[0]} backbone, not {backbone}")
    backbone = backbone or (mobile[0] if mobile else infer_backbone(trunk))
    if arch is None:
        kinds = {"head.aspp.": "deeplabv3", "head.psp.": "pspnet", "head.ppm_conv.": "upernet"}
        arch = next((a for prefix, a in kinds.items() if any(k.startswith(prefix) for k in heads)), "")
        if not arch:
            raise WeightsMismatch(f"{src}: no head.aspp.* (DeepLabV3), head.psp.* (PSPNet) or head.ppm_conv.* (UPerNet) keys: pass --arch")
    num_classes, width = _head_shape(heads, arch)
    model = build_segmentor(arch, backbone, num_classes, aux=any(k.startswith("auxlayer.") for k in heads),
                            head_width=width, normalization=dict(CAFFE_NORMALIZATION))
    trunk_keys = model.backbone.state_dict().keys()
    renamed = mobile[1](list(trunk_keys))[0] if mobile else to_timm_names(trunk, backbone)
    ignored = sorted(k for k in renamed if k.startswith(CLASSIFIER_PREFIXES) and k not in trunk_keys)
    state = {f"backbone.{k}": v for k, v in renamed.items() if k not in ignored} | heads
    fit_state_dict(model, state, f"{src} does not fit {arch}-{backbone} with {width}-wide heads", drop_classifier=False)
    save_segmentor(model, dst, {"kind": "segmentor", **meta, "ignored": [f"pretrained.{k}" for k in ignored]})
    return ImportReport("segmentor", backbone, os.fspath(src), digest, len(released), ignored, model.build_args)


def _import_mit(released: dict[str, torch.Tensor], src: str | os.PathLike, dst: str | os.PathLike, digest: str,
                meta: dict[str, Any], backbone: str | None) -> ImportReport:
    """NVlabs' layout (models/released_mit.py): an ImageNet encoder file (mit_b*.pth) becomes a file
    for `student.pretrained=PATH` (ImageNet's RGB mean/std, as it was trained); a SegFormer checkpoint
    of the release (its B4 teacher, its students) a model checkpoint in the release's convention
    (BGR, 0-255, Caffe mean: the data it was trained on)."""
    found = infer_mit(released)
    if backbone and backbone != found:
        raise WeightsMismatch(f"{src} holds a {found} encoder, not {backbone}")
    encoder, rest = encoder_names(released)
    if "linear_pred.weight" not in released:
        ignored = sorted(k for k in rest if k.startswith(IMAGENET_HEAD))
        if len(ignored) != len(rest):
            raise WeightsMismatch(f"{src}: tensors of no MiT encoder: {sorted(set(rest) - set(ignored))[:5]}")
        net = SegFormer(found, 1).encoder
        fit_state_dict(net, encoder, f"{src} does not fit the {found} encoder", drop_classifier=False)
        build_args = {"backbone": found, "normalization": dict(MIT_NORMALIZATION)}
        save_state_dict(net.state_dict(), dst, build_args, {"kind": "backbone", **meta, "ignored": ignored})
        return ImportReport("backbone", found, os.fspath(src), digest, len(released), ignored, build_args)
    decoder, left = decoder_names({k: released[k] for k in rest})
    if left:
        raise WeightsMismatch(f"{src}: tensors of no SegFormer: {sorted(left)[:5]}")
    num_classes = int(released["linear_pred.weight"].shape[0])
    model = build_segmentor("segformer", found, num_classes, normalization=dict(CAFFE_NORMALIZATION))
    state = {f"encoder.{k}": v for k, v in encoder.items()} | {f"decoder.{k}": v for k, v in decoder.items()}
    fit_state_dict(model, state, f"{src} does not fit segformer-{found}", drop_classifier=False)
    save_segmentor(model, dst, {"kind": "segmentor", **meta, "ignored": []})
    return ImportReport("segmentor", found, os.fspath(src), digest, len(released), [], model.build_args)


def _release_mobile(state: dict[str, torch.Tensor]) -> tuple[str, Callable[[list[str]], tuple[dict[str, torch.Tensor], list[str]]],
                                                               dict[str, Any]] | None:
    """CIRKDv2's MobileNetV3 (OpenMMLab's layout) or MobileViT-XXS (mmpretrain's) tensors: our backbone
    name, their mapping onto timm's keys (with the classifier keys dropped), and the convention the
    ImageNet weights were trained in (MobileNetV3: torchvision's RGB mean/std; MobileViT: BGR in
    [0, 1]). None for another layout."""
    if is_mmseg_mobilenetv3(state):
        found = infer_mobilenetv3(state)
        return found, lambda keys: (to_timm_mobilenetv3(state, keys), []), timm_normalization(found)
    if is_mmpretrain_mobilevit(state):
        return "mobilevit_xxs", lambda keys: to_timm_mobilevit(state, keys), dict(MOBILEVIT_NORMALIZATION)
    return None


def _import_mobile(mobile: tuple[str, Callable[[list[str]], tuple[dict[str, torch.Tensor], list[str]]], dict[str, Any]],
                   released: dict[str, torch.Tensor], src: str | os.PathLike, dst: str | os.PathLike, digest: str,
                   meta: dict[str, Any], backbone: str | None) -> ImportReport:
    """A MobileNetV3 or MobileViT ImageNet file of the release becomes a file for `student.pretrained=PATH`."""
    found, mapping, normalization = mobile
    if backbone and backbone != found:
        raise WeightsMismatch(f"{src} holds a {found} backbone, not {backbone}")
    net = create_backbone(found)
    state, ignored = mapping(list(net.state_dict()))
    fit_state_dict(net, state, f"{src} does not fit backbone {found}", drop_classifier=False)
    build_args = {"backbone": found, "normalization": normalization}
    save_state_dict(net.state_dict(), dst, build_args, {"kind": "backbone", **meta, "ignored": ignored})
    return ImportReport("backbone", found, os.fspath(src), digest, len(released), ignored, build_args)
