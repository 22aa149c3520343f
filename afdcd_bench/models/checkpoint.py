"""Model checkpoints: safetensors weights plus a JSON of the build arguments, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..files import atomic_write
from .segmentor import Segmentor, build_segmentor
from .weights import load_safetensors


def sidecar(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike, build_args: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"build_args": build_args, **(extra or {})}
    atomic_write(sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path


def save_segmentor(model: Segmentor, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `path` (safetensors) and `path.json` (build arguments and any extra facts)."""
    return save_state_dict(model.state_dict(), path, model.build_args, extra)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint metadata {meta_path} not found beside {path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"checkpoint metadata {meta_path} is not valid JSON (truncated or damaged: {exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("build_args"), dict):
        raise ValueError(f"checkpoint metadata {meta_path} has no build_args")
    return meta


def load_segmentor(path: str | os.PathLike, map_location: str = "cpu") -> Segmentor:
    """Rebuild the network from its JSON and load the weights (strict, no unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    meta = read_meta(path)
    try:
        model = build_segmentor(pretrained=False, **meta["build_args"])
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata {sidecar(path)}: build_args do not describe a network ({exc})") from None
    missing, unexpected = model.load_state_dict(load_safetensors(path, map_location), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit its build arguments: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
