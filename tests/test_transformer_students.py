"""A SegFormer student through the whole loop (docs/networks.md): trained, validated and recorded
alone, with logit KD from a SegFormer teacher, and with Af-DCD on its 1/32 "C4"; the taps at their
strides reach each method; a SegFormer teacher checkpoint must be the network the recipe names."""
import pytest
import torch

from afdcd_bench.config import load_recipe
from afdcd_bench.engine import train
from afdcd_bench.models import build_segmentor, load_segmentor, save_segmentor
from conftest import TINY

pytestmark = pytest.mark.slow

SEGFORMER = ["student.arch=segformer", "student.backbone=mit_b0", "student.pretrained=false", "student.aux=false",
             "student.head_width=null", "data.crop_size=[128, 128]"]


def _teacher(tmp_path):
    path = tmp_path / "segformer_b0_teacher.safetensors"
    torch.manual_seed(5)
    save_segmentor(build_segmentor("segformer", "mit_b0", 11), path)
    return ["teacher.arch=segformer", "teacher.backbone=mit_b0", f"teacher.checkpoint={path}", "teacher.recipe=null"]


def test_a_segformer_student_trains_alone_with_kd_and_with_afdcd(tmp_path):
    teacher = _teacher(tmp_path)
    records = {}
    for recipe, extra in (("demo/baseline", []), ("demo/kd", teacher), ("demo/afdcd", teacher + ["method.afdcd.patch=[2,2]"])):
        cfg = load_recipe(recipe, [*TINY, *SEGFORMER, *extra, f"output_dir={tmp_path / 'runs'}", "train.val_interval=2"])
        records[recipe] = train(cfg, show_progress=False)
        folder = tmp_path / "runs" / recipe / "seed0"
        student = load_segmentor(folder / "final.safetensors")
        assert student.build_args["arch"] == "segformer" and student.build_args["normalization"]["std"] == [0.229, 0.224, 0.225]
        assert 0.0 <= records[recipe]["final_miou"] <= 1.0
    assert set(records["demo/kd"]["method_terms"]) >= {"task", "kd"}
    assert set(records["demo/afdcd"]["method_terms"]) >= {"task", "kd", "fd", "ctr"}
