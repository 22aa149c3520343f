"""The demo's ImageNet stand-in: a backbone pretrained once on digit classification.

The paper's students and teacher start from ImageNet weights; the demo's cannot download them,
so each backbone is first trained to classify single digits on the scenes' backgrounds (made
from the same source split as the training scenes, data/digits.py), and teacher and students are
initialised from that, as the paper initialises from ImageNet. The weights are cached per
backbone and made again only when the cache lacks them (docs/demo.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.digits import cache_root, classification_split
from ..data.batches import normalize_images
from ..files import atomic_write
from ..models.backbones import create_backbone, timm_normalization

DIGITS = "digits"  # the recipe value of student.pretrained that asks for these weights
STEPS, BATCH, LR = 300, 64, 2e-3
VERSION = 1


class Classifier(nn.Module):
    def __init__(self, backbone: str):
        super().__init__()
        self.backbone = create_backbone(backbone, output_stride=32)  # as ImageNet pretraining: undilated
        self.fc = nn.Linear(self.backbone.feature_info.channels()[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)[-1].mean(dim=(2, 3)))


def _tensor(images: np.ndarray, norm: dict) -> torch.Tensor:
    """A batch normalised as the datasets do; channels-last in memory, the layout the cached
    weights were trained from (another layout changes the float rounding of every conv)."""
    pixels = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a copy: the source may be read-only
    return normalize_images(pixels, norm).contiguous(memory_format=torch.channels_last)


def pretrained_path(backbone: str) -> Path:
    return cache_root() / "pretrained" / f"{backbone}-digits-v{VERSION}-{STEPS}x{BATCH}.safetensors"


def digits_pretrained(backbone: str, log=print) -> Path:
    """The cached weights file of `backbone` pretrained on digit classification, made if missing."""
    path = pretrained_path(backbone)
    if path.is_file():
        return path
    norm = timm_normalization(backbone)
    train_x, train_y = classification_split("train")
    val_x, val_y = classification_split("val")
    log(f"pretraining {backbone} on digit classification ({STEPS} steps of {BATCH}; once, cached at {path})")
    with torch.random.fork_rng():  # the run's own random state stays as it was
        torch.manual_seed(0)
        model = Classifier(backbone)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
        g = torch.Generator().manual_seed(0)
        xs = _tensor(train_x, norm)
        ys = torch.from_numpy(train_y)
        model.train()
        for step in range(STEPS):
            idx = torch.randint(0, len(ys), (BATCH,), generator=g)
            x = xs[idx]
            if step % 2:  # cheap augmentation: shifts by up to 2 pixels
                x = torch.roll(x, shifts=(int(torch.randint(-2, 3, (1,), generator=g)), int(torch.randint(-2, 3, (1,), generator=g))), dims=(2, 3))
            loss = F.cross_entropy(model(x), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(_tensor(val_x[i:i + 500], norm)).argmax(1) for i in range(0, len(val_y), 500)])
        accuracy = float((pred == torch.from_numpy(val_y)).float().mean())
    log(f"{backbone}: digit classification accuracy {100 * accuracy:.1f}% on held-out digits")
    tensors = {k: v.detach().contiguous() for k, v in model.backbone.state_dict().items()}
    meta = {"task": "digit classification (the demo's ImageNet stand-in)", "steps": STEPS, "batch": BATCH, "lr": LR,
            "val_accuracy": accuracy, "build_args": {"normalization": norm}}
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path
