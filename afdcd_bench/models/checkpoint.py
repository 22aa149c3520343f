"""Model checkpoints: safetensors weights plus a JSON of the build arguments, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .segmentor import Segmentor, build_segmentor


def sidecar(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike, build_args: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"build_args": build_args, **(extra or {})}
    _atomic_write(sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    _atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path


def save_segmentor(model: Segmentor, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `path` (safetensors) and `path.json` (build arguments and any extra facts)."""
    return save_state_dict(model.state_dict(), path, model.build_args, extra)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint metadata {meta_path} not found beside {path}")
    return json.loads(meta_path.read_text())


def load_segmentor(path: str | os.PathLike, map_location: str = "cpu") -> Segmentor:
    """Rebuild the network from its JSON and load the weights (strict, no unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    meta = read_meta(path)
    model = build_segmentor(pretrained=False, **meta["build_args"])
    missing, unexpected = model.load_state_dict(load_file(str(path), device=map_location), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit its build arguments: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
