"""The demo's ImageNet stand-in: backbones pretrained on digit classification, made once, cached,
loaded into the stride-8 backbone, without touching the run's random state."""
import json

import torch

import afdcd_bench.engine.pretrain as pretrain
from afdcd_bench.config import load_recipe
from afdcd_bench.data.digits import CLS_SIZE, classification_split
from afdcd_bench.models import build_segmentor


def test_classification_task_uses_the_training_source_digits_and_is_cached():
    x, y = classification_split("val")
    assert x.shape[1:] == (CLS_SIZE, CLS_SIZE, 3) and x.dtype.name == "uint8" and set(y.tolist()) == set(range(10))
    x2, y2 = classification_split("val")
    assert (x == x2).all() and (y == y2).all()


def test_pretrained_backbone_is_made_once_and_initialises_the_segmentor(monkeypatch):
    monkeypatch.setattr(pretrain, "STEPS", 3)
    monkeypatch.setattr(pretrain, "BATCH", 8)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    path = pretrain.digits_pretrained("resnet10t", log=lambda *a: None)
    assert torch.equal(torch.rand(3), before)  # the caller's random state is as it was
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["steps"] == 3 and 0 <= meta["val_accuracy"] <= 1 and meta["build_args"]["normalization"]["mean"]
    stamp = path.stat().st_mtime_ns
    assert pretrain.digits_pretrained("resnet10t", log=lambda *a: None) == path and path.stat().st_mtime_ns == stamp
    seg = build_segmentor("deeplabv3", "resnet10t", 11, pretrained=str(path))
    from safetensors.torch import load_file

    saved = load_file(str(path))
    state = seg.backbone.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    # the recipes name it, and the name is not taken for a file path
    assert load_recipe("demo/baseline").student.pretrained == "digits"
