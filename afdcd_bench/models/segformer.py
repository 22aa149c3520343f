"""SegFormer: NVlabs' Mix Transformer (MiT-B0..B5) encoder and all-MLP decoder, from Hugging Face
transformers' Segformer (timm has no MiT). Its outputs are the CNN segmentors' (SegmentorOutput), so
every method reads them by the same names:

- logits: the decoder's, at 1/4 of the input (the CNN students' are at 1/8);
- features ("C4"): the encoder's last stage, at 1/32 (the stage a CNN's C4 corresponds to: the
  deepest, widest map the decoder reads);
- c3: the stage before it, at 1/16; no aux head (SegFormer has none);
- head: the decoder's fused feature, the classifier's input, at 1/4 and `decoder width` channels.

As CIRKDv2 builds it (models/segformer.py at dab64db, NVlabs' code): no dropout before the classifier
(its Dropout2d is 0), drop path 0.1 rising linearly over the blocks, LayerNorm eps 1e-6 in the blocks
and after each stage (1e-5 in the patch embeddings and the attention's reduction), where transformers
uses 1e-5 throughout; the decoder's fusing conv has a bias there, which the BatchNorm after it makes
redundant (transformers' has none; an imported bias goes into the BatchNorm's running mean).
"""
from __future__ import annotations

from typing import Any

import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

# name: (hidden sizes of the four stages, blocks per stage, decoder width), from the SegFormer paper's
# Table 6 (attention heads 1/2/5/8, spatial reduction 8/4/2/1, MLP ratio 4 in every variant)
MIT: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
_NVLABS_EPS = re.compile(r"(layernorm_before|layernorm_after|stages\.\d+\.layer_norm)$")
# ImageNet's mean and std on RGB in [0, 1]: the MiT weights' (mmsegmentation's 123.675/58.395, ... on 0-255)
MIT_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "bgr": False, "scale": 1.0}


def mit_config(backbone: str, num_classes: int, drop_path: float = 0.1) -> Any:
    from transformers import SegformerConfig

    if backbone not in MIT:
        raise ValueError(f"unknown SegFormer encoder {backbone!r}; expected one of {sorted(MIT)}")
    hidden, depths, width = MIT[backbone]
    return SegformerConfig(hidden_sizes=list(hidden), depths=list(depths), decoder_hidden_size=width, num_labels=num_classes,
                           num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4],
                           drop_path_rate=drop_path, classifier_dropout_prob=0.0, semantic_loss_ignore_index=255)


class SegFormer(nn.Module):
    def __init__(self, backbone: str, num_classes: int, pretrained: bool | str = False,
                 normalization: dict[str, Any] | None = None):
        super().__init__()
        from transformers import SegformerModel
        from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

        if pretrained is True:
            raise ValueError(f"segformer-{backbone}: there are no MiT weights to fetch by name; give the path of NVlabs' "
                             f"{backbone}.pth (or of its import by `afdcd-bench import-released`)")
        config = mit_config(backbone, int(num_classes))
        self.encoder = SegformerModel(config)
        for name, module in self.encoder.named_modules():  # NVlabs' eps where it differs from transformers' default
            if isinstance(module, nn.LayerNorm) and _NVLABS_EPS.search(name):
                module.eps = 1e-6
        self.decoder = SegformerDecodeHead(config)
        self._head: list[torch.Tensor] = []
        # a bound method, not a closure: a deep copy of the network (engine/full_weights.py) keeps its own
        self.decoder.classifier.register_forward_pre_hook(self._keep_head)
        if pretrained:
            weights_convention = load_encoder(self.encoder, pretrained, backbone)
            normalization = normalization or weights_convention
        hidden, _, width = MIT[backbone]
        self.num_classes = int(num_classes)
        self.output_channels: dict[str, int | None] = {"logits": self.num_classes, "aux_logits": None, "features": hidden[-1],
                                                      "c3": hidden[-2], "head": width}
        self.output_strides: dict[str, int | None] = {"logits": 4, "aux_logits": None, "features": 32, "c3": 16, "head": 4}
        self.build_args: dict[str, Any] = {"arch": "segformer", "backbone": backbone, "num_classes": self.num_classes,
                                           "aux": False, "head_width": width,
                                           "normalization": normalization or dict(MIT_NORMALIZATION)}

    def _keep_head(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        """The classifier's input: the decoder's fused feature (the `head` tap)."""
        self._head.append(args[0])

    def forward(self, x: torch.Tensor) -> Any:
        from .segmentor import SegmentorOutput

        stages = self.encoder(x, output_hidden_states=True, return_dict=True).hidden_states
        self._head.clear()
        logits = self.decoder(stages)
        head = self._head.pop()
        return SegmentorOutput(logits, None, stages[-1], stages[-2], head)


def load_encoder(encoder: nn.Module, path: str | os.PathLike, backbone: str) -> dict[str, Any]:
    """Fit a MiT encoder file into `encoder`, strictly: NVlabs' mit_b*.pth (its ImageNet classifier
    dropped) or its import (models/released_mit.py). Returns the input convention of the weights."""
    from .backbones import PretrainedWeightsError
    from .released_mit import encoder_names, infer_mit, is_nvlabs_mit
    from .weights import WeightsMismatch, fit_state_dict, read_state_dict

    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"pretrained weights file not found: {path} (NVlabs' {backbone}.pth, or its import by "
                                     "`afdcd-bench import-released`)")
    state = read_state_dict(path)
    if is_nvlabs_mit(state):
        if infer_mit(state) != backbone:
            raise PretrainedWeightsError(f"{path} holds a {infer_mit(state)} encoder, not {backbone}")
        state, rest = encoder_names(state)
        if [k for k in rest if not k.startswith("head.")]:
            raise PretrainedWeightsError(f"{path}: tensors of no MiT encoder: {sorted(rest)[:5]}")
    try:
        fit_state_dict(encoder, state, f"weights file {path} does not fit the {backbone} encoder", drop_classifier=False)
    except WeightsMismatch as exc:
        raise PretrainedWeightsError(str(exc)) from exc
    meta = Path(path).with_suffix(".json")
    norm = json.loads(meta.read_text()).get("build_args", {}).get("normalization") if meta.is_file() else None
    return dict(norm or MIT_NORMALIZATION)
