"""NVlabs' SegFormer layout (`mit_b*.pth`, and the SegFormer checkpoints CIRKDv2 releases, whose
code is NVlabs') renamed to transformers' Segformer as models/segformer.py builds it.

NVlabs names the four stages patch_embed1..4 / block1..4 / norm1..4 and keeps attention's key and
value in one `kv` Linear whose first half of outputs is the key (its forward reshapes the output as
(2, heads, head_dim) and takes [0] as k); transformers has k_proj and v_proj. The decoder is
linear_c1..4, a biased 1x1 fusing conv with its BatchNorm (linear_fuse.0 / .1) and linear_pred;
transformers' fusing conv has no bias, so the bias moves into the BatchNorm's running mean
(BN(conv(x) + b) has the same output with running_mean - b in eval, and batch statistics absorb it
in training). An ImageNet file's classifier (`head.*`) is dropped and listed.
"""
from __future__ import annotations

import re

import torch

from .segformer import MIT

_BLOCK = {
    "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj", "attn.proj": "attention.o_proj",
    "attn.sr": "attention.sequence_reduction.sequence_reduction", "attn.norm": "attention.sequence_reduction.layer_norm",
    "mlp.fc1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.fc2",
}
IMAGENET_HEAD = ("head.",)


def is_nvlabs_mit(state: dict[str, torch.Tensor]) -> bool:
    return "patch_embed1.proj.weight" in state and "block1.0.attn.q.weight" in state


def infer_mit(state: dict[str, torch.Tensor]) -> str:
    """mit_b0..b5 from the stage widths and block counts of the file."""
    widths = tuple(int(state[f"patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5))
    depths = tuple(len({m.group(1) for k in state if (m := re.match(rf"block{i}\.(\d+)\.", k))}) for i in range(1, 5))
    for name, (hidden, blocks, _) in MIT.items():
        if (hidden, blocks) == (widths, depths):
            return name
    raise ValueError(f"stage widths {widths} and blocks {depths} are no MiT-B0..B5")


def encoder_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the encoder's tensors under transformers' names, the source keys not of the encoder)."""
    out: dict[str, torch.Tensor] = {}
    rest = []
    for key, value in state.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(weight|bias)", key):
            part = "proj" if m.group(2) == "proj" else "layer_norm"
            out[f"stages.{int(m.group(1)) - 1}.patch_embeddings.{part}.{m.group(3)}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(weight|bias)", key):
            out[f"stages.{int(m.group(1)) - 1}.layer_norm.{m.group(2)}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)", key):
            stage, block, part, kind = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(4)
            where = f"stages.{stage}.blocks.{block}"
            if part == "attn.kv":
                half = value.shape[0] // 2
                out[f"{where}.attention.k_proj.{kind}"] = value[:half].clone()
                out[f"{where}.attention.v_proj.{kind}"] = value[half:].clone()
            elif part in _BLOCK:
                out[f"{where}.{_BLOCK[part]}.{kind}"] = value
            else:
                rest.append(key)
        else:
            rest.append(key)
    return out, rest


def decoder_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the decoder's tensors under transformers' names, the keys left): the fusing conv's bias into
    the BatchNorm's running mean."""
    out: dict[str, torch.Tensor] = {}
    rest = []
    for key, value in state.items():
        if m := re.fullmatch(r"linear_c(\d)\.proj\.(weight|bias)", key):
            out[f"linear_projections.{int(m.group(1)) - 1}.proj.{m.group(2)}"] = value
        elif key == "linear_fuse.0.weight":
            out["linear_fuse.weight"] = value
        elif m := re.fullmatch(r"linear_fuse\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)", key):
            out[f"batch_norm.{m.group(1)}"] = value
        elif m := re.fullmatch(r"linear_pred\.(weight|bias)", key):
            out[f"classifier.{m.group(1)}"] = value
        elif key != "linear_fuse.0.bias":
            rest.append(key)
    if "linear_fuse.0.bias" in state and "batch_norm.running_mean" in out:
        out["batch_norm.running_mean"] = out["batch_norm.running_mean"] - state["linear_fuse.0.bias"]
    elif "linear_fuse.0.bias" in state:
        rest.append("linear_fuse.0.bias")
    return out, rest
