"""Import of released weights, local weight files and the size figures."""
import json
import pickle

import pytest
import timm
import torch

from afdcd_bench.cli import main
from afdcd_bench.models import CAFFE_NORMALIZATION, PretrainedWeightsError, build_segmentor, load_segmentor, read_meta
from afdcd_bench.models.complexity import model_complexity
from afdcd_bench.models.released import STEM_RENAMES, import_released
from afdcd_bench.models.weights import WeightsMismatch, sha256_file

TO_RELEASED_STEM = {v: k for k, v in STEM_RENAMES.items()}


def released_resnet_names(state):
    """Our deep-stem timm keys -> the released names (the inverse of the import's renames)."""
    out = {}
    for k, v in state.items():
        for ours, theirs in sorted(TO_RELEASED_STEM.items(), key=lambda kv: -len(kv[0])):
            if k.startswith(ours + ".") and not k.startswith("layer"):
                k = theirs + k[len(ours):]
                break
        out[k] = v
    return out


def randomise(module):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * (0.5 if "var" in name else 0.2) + (0.5 if "var" in name else -0.1))
    return module


def test_released_deepstem_resnet18_backbone(tmp_path):
    full = randomise(timm.create_model("resnet18", stem_width=64, stem_type="deep"))
    released = released_resnet_names(full.state_dict())
    assert "conv2.weight" in released and "bn3.running_var" in released and "fc.weight" in released
    src = tmp_path / "resnet18-imagenet.pth"
    torch.save(released, src)
    rep = import_released(src, tmp_path / "r18.safetensors")
    assert (rep.kind, rep.backbone) == ("backbone", "resnet18_deepstem")
    assert rep.ignored == ["fc.bias", "fc.weight"] and rep.sha256 == sha256_file(src)
    model = build_segmentor("deeplabv3", "resnet18_deepstem", 19, pretrained=str(tmp_path / "r18.safetensors"))
    assert model.build_args["normalization"] == CAFFE_NORMALIZATION
    ours = model.backbone.state_dict()
    for k, v in full.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(ours[k], v), k
    assert read_meta(tmp_path / "r18.safetensors")["source_sha256"] == rep.sha256


def _released_segmentor(model):
    """A checkpoint with the released key layout: backbone under pretrained., heads as ours."""
    out = {}
    bb = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    for k, v in released_resnet_names(bb).items():
        out[f"pretrained.{k}"] = v
    out["pretrained.fc.weight"] = torch.zeros(1000, 512)  # released nets keep their ImageNet classifier
    out["pretrained.fc.bias"] = torch.zeros(1000)
    out.update({k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")})
    return out


@pytest.mark.parametrize("arch", ["deeplabv3", "pspnet"])
def test_released_segmentor_checkpoint_round_trip(tmp_path, arch):
    ref = randomise(build_segmentor(arch, "resnet18_deepstem", 19, aux=True, head_width=64)).eval()
    src = tmp_path / f"{arch}_resnet18_citys_best_model.pth"
    torch.save(_released_segmentor(ref), src)
    rep = import_released(src, tmp_path / "teacher.safetensors")
    assert rep.kind == "segmentor" and rep.ignored == ["fc.bias", "fc.weight"]
    model = load_segmentor(tmp_path / "teacher.safetensors").eval()
    assert model.build_args | {"normalization": None} == {"arch": arch, "backbone": "resnet18_deepstem", "num_classes": 19,
                                                          "aux": True, "head_width": 64, "normalization": None}
    assert model.build_args["normalization"]["bgr"] is True
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), model(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.aux_logits, b.aux_logits)
    meta = read_meta(tmp_path / "teacher.safetensors")
    assert meta["source_sha256"] == sha256_file(src) and meta["kind"] == "segmentor"


def test_released_mobilenetv2_mapped_by_position(tmp_path):
    ref = randomise(build_segmentor("deeplabv3", "mobilenetv2_100", 19)).eval()
    bb = [(k, v) for k, v in ref.state_dict().items() if k.startswith("backbone.")]
    released = {f"pretrained.features.{i}": v for i, (k, v) in enumerate(bb)}  # other names, same order
    released.update({k: v for k, v in ref.state_dict().items() if not k.startswith("backbone.")})
    torch.save(released, tmp_path / "mbv2.pth")
    assert import_released(tmp_path / "mbv2.pth", tmp_path / "mbv2.safetensors").backbone == "mobilenetv2_100"
    model = load_segmentor(tmp_path / "mbv2.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ref(x).logits, model(x).logits)


def test_released_mismatches_are_named(tmp_path):
    ref = build_segmentor("deeplabv3", "resnet18_deepstem", 19, aux=True, head_width=64)
    good = _released_segmentor(ref)
    missing = {k: v for k, v in good.items() if k != "head.aspp.b2.block.1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatch, match=r"missing: head\.aspp\.b2\.block\.1\.weight"):
        import_released(tmp_path / "missing.pth", tmp_path / "out.safetensors")
    extra = dict(good, **{"head.extra.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsMismatch, match=r"left over: head\.extra\.weight"):
        import_released(tmp_path / "extra.pth", tmp_path / "out.safetensors")
    bad = dict(good)
    bad["pretrained.layer1.0.conv1.weight"] = torch.zeros(64, 128, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsMismatch, match=r"shape .*layer1\.0\.conv1\.weight"):
        import_released(tmp_path / "shape.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


class Payload:
    """Creates a file when unpickled: its absence proves nothing in the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_released_files_are_never_unpickled(tmp_path):
    trace = tmp_path / "written-by-the-pickle"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": Payload(trace)}, f)
    with open(tmp_path / "check.pth", "wb") as f:  # the payload is live: plain pickle runs it
        pickle.dump(Payload(tmp_path / "control"), f)
    pickle.loads((tmp_path / "check.pth").read_bytes())
    assert (tmp_path / "control").exists()
    with pytest.raises(WeightsMismatch, match="holds objects other than tensors and was not loaded"):
        import_released(tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert not trace.exists()


@pytest.mark.parametrize("text", ["version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n", "<html>sign in</html>"])
def test_a_text_file_is_called_a_text_file(tmp_path, text):
    (tmp_path / "r18.pth").write_text(text)
    with pytest.raises(WeightsMismatch, match=r"r18.pth is a text file, not a torch checkpoint \(it begins '"):
        import_released(tmp_path / "r18.pth", tmp_path / "out.safetensors")


def test_local_file_with_wrong_keys_is_refused(tmp_path):
    # timm loads features_only models non-strictly: a wrong file would silently load nothing.
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(PretrainedWeightsError, match="missing: conv1.weight"):
        build_segmentor("deeplabv3", "resnet18", 3, pretrained=str(tmp_path / "wrong.safetensors"))


def test_import_released_cli(tmp_path, capsys):
    full = timm.create_model("resnet18", stem_width=64, stem_type="deep")
    torch.save(released_resnet_names(full.state_dict()), tmp_path / "r18.pth")
    assert main(["import-released", str(tmp_path / "r18.pth"), str(tmp_path / "r18.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "resnet18_deepstem" in out and "student.pretrained=" in out
    assert main(["import-released", str(tmp_path / "nothing.pth"), str(tmp_path / "x.safetensors")]) == 2


def test_size_figures_match_the_papers():
    """True multiply-adds, and the papers' dilation-blind counter reproduced to their printed digit."""
    size = (1024, 2048)
    figures = {"resnet101_deepstem": (61.1, 2063, 2371.7), "resnet18_deepstem": (13.6, 517, 572.0), "mobilenetv2_100": (3.2, 107, 128.9)}
    for backbone, (params, true_g, printed_g) in figures.items():
        c = model_complexity("deeplabv3", backbone, 19, size)
        assert round(c["params_m"], 1) == params
        assert abs(c["gmacs"] - true_g) / true_g < 0.01
        assert round(c["gmacs_printed_style"], 1) == printed_g


def test_models_command_lists_recipe_models(capsys):
    assert main(["models", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["role"] for r in rows} == {"teacher", "student"}
    attention = [r for r in rows if r["model"].startswith("segformer") or "mobilevit" in r["model"]]
    cnn = [r for r in rows if r not in attention]
    assert all(r["gmacs"] > 0 and r["gmacs_printed_style"] >= r["gmacs"] for r in cnn)  # dilation over-counted
    # SegFormer and MobileViT (the 2025 recipes): the papers' conv-and-linear counter leaves attention's products out
    segformer = {r["model"]: r for r in rows if r["model"].startswith("segformer")}
    assert set(segformer) == {"segformer-mit_b0", "segformer-mit_b4"}
    assert all(0 < r["gmacs_printed_style"] < r["gmacs"] for r in attention)
    # every network of the 2025 table is listed
    assert {"deeplabv3-mobilenetv3_small_100", "deeplabv3-mobilenetv3_large_100", "pspnet-mobilenetv3_small_100",
            "pspnet-mobilenetv3_large_100", "deeplabv3-mobilevit_xxs", "pspnet-mobilevit_xxs",
            "upernet-resnet18_deepstem"} <= {r["model"] for r in rows}
    assert segformer["segformer-mit_b0"]["params_m"] == pytest.approx(3.7, abs=0.1)


def test_public_mobilenetv2_imagenet_file_drops_exactly_its_classification_head(tmp_path, capsys):
    """Public MobileNetV2 files of the released layout carry features.18 (1x1 conv to 1280 + BN) and the classifier."""
    from afdcd_bench.models.backbones import create_backbone

    net = randomise(create_backbone("mobilenetv2_100"))
    state = {f"features.{i * 18 // len(net.state_dict())}.t{i}": v for i, v in enumerate(net.state_dict().values())}  # features.0-17
    head = {"features.18.0.weight": torch.randn(1280, 320, 1, 1), "features.18.1.weight": torch.ones(1280),
            "features.18.1.bias": torch.zeros(1280), "features.18.1.running_mean": torch.zeros(1280),
            "features.18.1.running_var": torch.ones(1280), "features.18.1.num_batches_tracked": torch.tensor(0),
            "classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.zeros(1000)}
    torch.save({**state, **head}, tmp_path / "mobilenet_v2-imagenet.pth")
    assert main(["import-released", str(tmp_path / "mobilenet_v2-imagenet.pth"), str(tmp_path / "mbv2.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "dropped the ImageNet classification head (8 tensors)" in out and "features.18.0.weight" in out
    assert sorted(read_meta(tmp_path / "mbv2.safetensors")["ignored"]) == sorted(head)
    loaded = create_backbone("mobilenetv2_100", pretrained=str(tmp_path / "mbv2.safetensors"))
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_cirkdv2_resnet18_student_imports_as_its_2025_recipes_network(tmp_path):
    """CIRKDv2 widened DeepLabV3's head on ResNet-18 to 512 (v1: 128); its student checkpoints keep v1's
    layout, so they import as released segmentors, and `score-released` scores each with its 2025 recipe."""
    from afdcd_bench.config import load_recipe
    from afdcd_bench.harness.released_scores import recipe_of
    from afdcd_bench.models import load_segmentor
    from afdcd_bench.models.fetch import BY_KEY

    entry = BY_KEY["cityscapes-cirkdv2-r18"]
    cfg = load_recipe(recipe_of(entry))
    assert (cfg.name, cfg.protocol, cfg.published.miou, cfg.published.split) == (
        "cityscapes/deeplabv3_resnet18_2025/cirkdv2", "2025", entry.published, "test-server")
    ref = randomise(build_segmentor("deeplabv3", "resnet18_deepstem", 19, aux=True, head_width=cfg.student.head_width)).eval()
    src = tmp_path / entry.file
    torch.save(_released_segmentor(ref), src)
    rep = import_released(src, tmp_path / "student.safetensors")
    assert rep.kind == "segmentor" and rep.build_args["head_width"] == 512
    model = load_segmentor(tmp_path / "student.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
    assert BY_KEY["cityscapes-cirkdv2-segformer_b0"].url.endswith("segv0.1/kd_segformer_MiT_B4_segformer_MiT_B0_citys_best_model.pth")
    assert recipe_of(BY_KEY["cityscapes-cirkdv2-segformer_b0"]) == "cityscapes/segformer_mitb0/cirkdv2"
