"""Reading weight files safely and fitting them to a network with every discrepancy named."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

# ImageNet classifier tensors: present in classification weights, absent from a features-only net.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "conv_head.", "bn2.", "last_linear.", "head.fc.")


class WeightsMismatch(ValueError):
    pass


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """safetensors.load_file with a message that names the file when it is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsMismatch(f"{path} is not a readable safetensors file (truncated or damaged: {exc})") from None


def load_torch_file(path: Path) -> object:
    """torch.load restricted to tensors; a refusal or a damaged file becomes one sentence."""
    import pickle

    head = Path(path).read_bytes()[:256]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):  # a pickle or zip starts with binary bytes
        first = head.decode("ascii").strip().splitlines()[0][:80] if head.strip() else ""
        raise WeightsMismatch(f"{path} is a text file, not a torch checkpoint (it begins {first!r}: a web page or a Git LFS "
                              "pointer saved in place of the file?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False: wrong advice for a file that may execute code
        raise WeightsMismatch(f"{path} holds objects other than tensors and was not loaded (nothing in it was run)") from None
    except Exception as exc:  # the legacy and zip readers fail on garbage in many ways (KeyError, RuntimeError, ...)
        raise WeightsMismatch(f"{path} is truncated or not a torch file (torch.load: {type(exc).__name__})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch pickle; pickles are read with weights_only=True.

    Unwraps {"state_dict": ...} / {"model": ...} and strips DataParallel's "module." prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    obj = load_safetensors(path) if path.suffix == ".safetensors" else load_torch_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise WeightsMismatch(f"{path} does not hold a state dict")
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsMismatch(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        state[k.removeprefix("module.")] = v
    return state


def is_bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_by_order(state: dict[str, torch.Tensor], src_keys: list[str], dst_keys: list[str], what: str) -> dict[str, torch.Tensor]:
    """state's tensors at src_keys renamed, in order, to dst_keys without their BN step counters: for
    release files whose tensors come in the target network's order under other names. A different
    count is refused here, naming `what`; shapes are checked when the tensors are fitted."""
    dst = [k for k in dst_keys if not is_bn_counter(k)]
    if len(src_keys) != len(dst):
        raise WeightsMismatch(f"{what} has {len(src_keys)} tensors, the network {len(dst)}")
    return {d: state[s] for s, d in zip(src_keys, dst)}


def without_prefix(state: dict[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _listing(name: str, items: list[str]) -> str:
    more = f" ... ({len(items)} in all)" if len(items) > 6 else ""
    return f"{name}: {', '.join(items[:6])}{more}"


def fit_state_dict(module: nn.Module, state: dict[str, torch.Tensor], what: str, drop_classifier: bool = True) -> list[str]:
    """Load `state` into `module` strictly; returns the classifier keys dropped on purpose.

    Missing, left-over and mis-shaped tensors are all listed in one WeightsMismatch. BN step
    counters missing from the file keep the module's value.
    """
    target = module.state_dict()
    ignored = sorted(k for k in state if k not in target and k.startswith(CLASSIFIER_PREFIXES)) if drop_classifier else []
    missing = [k for k in target if k not in state and not is_bn_counter(k)]
    left = [k for k in state if k not in target and k not in ignored]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items() if k in target and v.shape != target[k].shape]
    if missing or left or shapes:
        problems = [_listing(n, items) for n, items in (("missing", missing), ("left over", left), ("shape (file vs net)", shapes)) if items]
        raise WeightsMismatch(f"{what}: " + "; ".join(problems))
    full = {k: state.get(k, target[k]) for k in target}
    module.load_state_dict(full, strict=True)
    return ignored
