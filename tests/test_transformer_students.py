"""A SegFormer student through the whole loop (docs/networks.md): trained, validated and recorded
alone, with logit KD from a SegFormer teacher, and with Af-DCD on its 1/32 "C4"; the taps at their
strides reach each method; a SegFormer teacher checkpoint must be the network the recipe names."""
import json

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


def test_the_demos_transformer_student_learns_from_the_cnn_teacher_on_request(tmp_path, teacher):
    """demo/segformer_kd: SegFormer-B0 under the demo's CNN teacher, whose 1/8 logits are brought up
    to the student's 1/4 (method.resize_teacher); not in the default demo, run by its file name."""
    from afdcd_bench.harness.reproduce import plan

    assert not {"demo/segformer_baseline", "demo/segformer_kd"} & set(plan("demo"))
    assert "demo/segformer_kd" not in plan("demo", methods=["kd"])  # a run on request answers to its file name
    assert {"demo/segformer_baseline", "demo/segformer_kd"} <= set(plan("demo", methods=["segformer_kd"]))
    cfg = load_recipe("demo/segformer_kd", [*TINY, "student.backbone=mit_b0", f"teacher.checkpoint={teacher}", f"output_dir={tmp_path}"])
    assert (cfg.student.arch, cfg.method.resize_teacher) == ("segformer", True)
    rec = train(cfg, show_progress=False)
    assert set(rec["method_terms"]) >= {"task", "kd"} and rec["final_miou"] is not None
    assert load_segmentor(tmp_path / "demo/segformer_kd/seed0/final.safetensors").build_args["arch"] == "segformer"


def test_a_method_that_compares_maps_of_other_sizes_is_refused_at_load_with_the_reason():
    """A SegFormer teacher's logits are at 1/4 and its C4 at 1/32, a DeepLabV3 student's at 1/8: KD,
    Af-DCD, FitNet and DIST compare them as they are and are refused, naming the map and both sizes;
    KT brings the logits to the labels' size itself (its head feature still differs: refused for that);
    the same methods between two SegFormers build."""
    from afdcd_bench.config.schema import MethodConfig, from_dict
    from afdcd_bench.methods import BuildContext, build_method

    segformer, cnn = build_segmentor("segformer", "mit_b0", 11), build_segmentor("deeplabv3", "resnet18", 11)

    def build(name, student, teacher):
        ctx = BuildContext(student=student.output_channels, teacher=teacher.output_channels, num_classes=11,
                           crop_size=(64, 64), student_strides=student.output_strides, teacher_strides=teacher.output_strides)
        return build_method(from_dict(MethodConfig, {"name": name}), ctx)

    for name, tap in (("kd", "logits"), ("afdcd", "logits"), ("fitnet", "features"), ("dist", "logits"), ("kt", "head")):
        with pytest.raises(ValueError, match=rf"method '{name}' compares the student's {tap} \(1/\d+ of the input\) with the "
                                             rf"teacher's \(1/\d+\): it needs them at one size"):
            build(name, cnn, segformer)
    for name in ("kd", "afdcd", "fitnet", "dist", "kt", "cwd"):
        build(name, segformer, build_segmentor("segformer", "mit_b1", 11))


def test_resize_teacher_brings_a_heterogeneous_teachers_maps_to_the_students_size():
    """method.resize_teacher: the SegFormer teacher's 1/4 logits and head feature are averaged over the
    2x2 areas of the student's 1/8 pixels, its 1/32 C4 is upsampled bilinearly; every distiller then
    builds and computes on the pair, and the setting is no part of a run's id while it is off."""
    import torch.nn.functional as F

    from afdcd_bench.config import settings, to_dict
    from afdcd_bench.config.schema import MethodConfig, from_dict
    from afdcd_bench.losses import kd_loss
    from afdcd_bench.methods import BuildContext, build_method

    torch.manual_seed(0)
    teacher, student = build_segmentor("segformer", "mit_b0", 11).eval(), build_segmentor("deeplabv3", "resnet18", 11).train()
    ctx = BuildContext(student=student.output_channels, teacher=teacher.output_channels, num_classes=11, crop_size=(128, 128),
                       per_device_batch=2, student_strides=student.output_strides, teacher_strides=teacher.output_strides)
    x, y = torch.randn(2, 3, 128, 128), torch.randint(0, 11, (2, 128, 128))
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    kd = build_method(from_dict(MethodConfig, {"name": "kd", "resize_teacher": True}), ctx)
    assert kd.resized == {"logits", "features", "c3", "head"}
    pooled = F.avg_pool2d(t.logits, 2)  # 32x32 -> the student's 16x16
    assert torch.allclose(kd(s, t, y)["kd"], kd_loss(s.logits, pooled, 1.0), rtol=1e-5)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, student_out, teacher_out, labels):
            seen.update(features=teacher_out.features, head=teacher_out.head)
            return {}

    kd.parts["spy"] = Spy()
    kd(s, t, y)
    assert torch.allclose(seen["features"], F.interpolate(t.features, size=(16, 16), mode="bilinear", align_corners=False))
    assert torch.allclose(seen["head"], F.avg_pool2d(t.head, 2))
    for name in ("afdcd", "fitnet", "dist", "cwd+kd", "cirkdv2+kd", "kt"):
        method = build_method(from_dict(MethodConfig, {"name": name, "resize_teacher": True}), ctx)
        terms = method(s, t, y)
        assert all(torch.isfinite(v) for v in terms.values()) and len(terms) > 1, name
    with pytest.raises(ValueError, match="set method.resize_teacher=true"):
        build_method(from_dict(MethodConfig, {"name": "kd"}), ctx)
    cfg = load_recipe("demo/kd")
    assert "resize_teacher" not in settings(to_dict(cfg))["method"]
    assert settings(to_dict(load_recipe("demo/kd", ["method.resize_teacher=true"])))["method"]["resize_teacher"] is True


def test_reproduce_only_segformer_runs_its_teacher_baseline_and_every_distiller_on_a_fake_tree(tmp_path):
    """`reproduce cityscapes --only segformer`: the SegFormer-B4 teacher (not the 2023 protocol's
    R101) and MasKD's tokens on it, then the B0 baseline and every distiller with a 2025 recipe, each
    after that teacher; the table marks the test-server numbers."""
    from rich.console import Console

    from afdcd_bench.harness.reproduce import reproduce
    from test_cli import _fake_cityscapes

    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    tiny = ["student.pretrained=false", "data.crop_size=[128,128]", "data.num_workers=0", "train.iterations=2",
            "train.effective_batch=2", "train.val_interval=2", "train.checkpoint_interval=2", "train.mixed_precision=no",
            "eval.teacher_check=false"]
    console = Console(record=True, width=250)
    reproduce("cityscapes", seeds=1, data_root=str(root), only="segformer", executor="inprocess", extra=tiny,
              results_dir=str(tmp_path / "res"), output_dir=str(tmp_path / "runs"), console=console)
    records = sorted(p.name for p in (tmp_path / "res").glob("*__seed*.json"))
    assert records == [f"cityscapes__segformer_mitb0__{m}__seed0.json" for m in ("afdcd", "baseline", "cirkdv2", "cwd", "dist", "fitnet", "ifvd", "kd", "kt", "maskd", "skd")] \
        + ["cityscapes__segformer_mitb4__maskd_tokens__seed0.json", "cityscapes__segformer_mitb4__teacher__seed0.json"]
    planned = {f"{r['recipe']}@seed{r['seed']}": r for r in json.loads((tmp_path / "res/plan.json").read_text())["runs"]}
    assert planned["cityscapes/segformer_mitb0/kd@seed0"]["needs"] == ["cityscapes/segformer_mitb4/teacher@seed0"]
    assert planned["cityscapes/segformer_mitb0/baseline@seed0"]["needs"] == []
    # MasKD's tokens are learnt on the B4 teacher (its own stage), and its student reads them
    assert planned["cityscapes/segformer_mitb4/maskd_tokens@seed0"]["needs"] == ["cityscapes/segformer_mitb4/teacher@seed0"]
    assert "cityscapes/segformer_mitb4/maskd_tokens@seed0" in planned["cityscapes/segformer_mitb0/maskd@seed0"]["needs"]
    teacher = json.loads((tmp_path / "res/cityscapes__segformer_mitb4__teacher__seed0.json").read_text())
    kd = json.loads((tmp_path / "res/cityscapes__segformer_mitb0__kd__seed0.json").read_text())
    assert teacher["config"]["student"]["backbone"] == "mit_b4" and kd["config"]["teacher"]["backbone"] == "mit_b4"
