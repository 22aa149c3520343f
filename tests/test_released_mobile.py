"""The CIRKDv2 release's mobile ImageNet backbones import strictly onto timm's networks: MobileNetV3
(OpenMMLab's layout) and MobileViT-XXS (mmpretrain's), each tensor where its module sits in timm's
network, nothing missing or left over, the classifier dropped and listed."""
import pytest
import torch

from afdcd_bench.models import build_segmentor
from afdcd_bench.models.backbones import create_backbone
from afdcd_bench.models.released import import_released
from afdcd_bench.models.weights import WeightsMismatch

# models/base_models/mobilenetv3.py at dab64db: (kernel, mid, out, SE) of each inverted residual
SMALL = [(3, 16, 16, True), (3, 72, 24, False), (3, 88, 24, False), (5, 96, 40, True), (5, 240, 40, True),
         (5, 240, 40, True), (5, 120, 48, True), (5, 144, 48, True), (5, 288, 96, True), (5, 576, 96, True),
         (5, 576, 96, True)]
LARGE = [(3, 16, 16, False), (3, 64, 24, False), (3, 72, 24, False), (5, 72, 40, True), (5, 120, 40, True),
         (5, 120, 40, True), (3, 240, 80, False), (3, 200, 80, False), (3, 184, 80, False), (3, 184, 80, False),
         (3, 480, 112, True), (3, 672, 112, True), (5, 672, 160, True), (5, 960, 160, True), (5, 960, 160, True)]


def _divisible(v, d=8):  # the release's makedivisible
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def release_layout(settings, last, prefix="backbone."):
    g = torch.Generator().manual_seed(0)
    out = {}

    def conv(name, cout, cin, k, bias=False):
        out[f"{prefix}{name}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g)
        if bias:
            out[f"{prefix}{name}.conv.bias"] = torch.randn(cout, generator=g)

    def bn(name, c):
        for t in ("weight", "bias", "running_mean"):
            out[f"{prefix}{name}.bn.{t}"] = torch.randn(c, generator=g)
        out[f"{prefix}{name}.bn.running_var"] = torch.rand(c, generator=g) + 0.5
        out[f"{prefix}{name}.bn.num_batches_tracked"] = torch.tensor(7)

    conv("layer0", 16, 3, 3), bn("layer0", 16)
    cin = 16
    for i, (k, mid, cout, se) in enumerate(settings, 1):
        if cin != mid:
            conv(f"layer{i}.expand_conv", mid, cin, 1), bn(f"layer{i}.expand_conv", mid)
        out[f"{prefix}layer{i}.depthwise_conv.conv.weight"] = torch.randn(mid, 1, k, k, generator=g)
        bn(f"layer{i}.depthwise_conv", mid)
        if se:
            r = _divisible(mid // 4)
            conv(f"layer{i}.se.conv1", r, mid, 1, bias=True), conv(f"layer{i}.se.conv2", mid, r, 1, bias=True)
        conv(f"layer{i}.linear_conv", cout, mid, 1), bn(f"layer{i}.linear_conv", cout)
        cin = cout
    n = len(settings) + 1
    conv(f"layer{n}", last, cin, 1), bn(f"layer{n}", last)
    return out


def _imported(path):
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.mark.parametrize("settings, last, name", [(SMALL, 576, "mobilenetv3_small_100"), (LARGE, 960, "mobilenetv3_large_100")])
def test_release_mobilenetv3_maps_each_tensor_onto_its_timm_module(tmp_path, settings, last, name):
    src = tmp_path / "mbv3.pth"
    released = release_layout(settings, last)
    torch.save({"state_dict": released}, src)
    report = import_released(src, tmp_path / "out.safetensors")
    assert (report.kind, report.backbone, report.ignored) == ("backbone", name, [])
    assert report.build_args["normalization"]["std"] == [0.229, 0.224, 0.225]  # torchvision's training convention
    got = _imported(tmp_path / "out.safetensors")
    r = {k.removeprefix("backbone."): v for k, v in released.items()}
    assert torch.equal(got["conv_stem.weight"], r["layer0.conv.weight"]) and torch.equal(got["bn1.running_var"], r["layer0.bn.running_var"])
    first = "blocks.0.0"  # the first block: depthwise, (SE), pointwise, no expansion
    assert torch.equal(got[f"{first}.conv_dw.weight"], r["layer1.depthwise_conv.conv.weight"])
    assert torch.equal(got[f"{first}.conv_pw.weight"], r["layer1.linear_conv.conv.weight"])
    # layer 4 (a 5x5 stride-2 block with expansion and SE) is the first block of timm's third stage in both
    b, layer = "blocks.2.0", 4
    for timm_key, ours in (("conv_pw.weight", "expand_conv.conv.weight"), ("bn1.bias", "expand_conv.bn.bias"),
                           ("conv_dw.weight", "depthwise_conv.conv.weight"), ("se.conv_reduce.bias", "se.conv1.conv.bias"),
                           ("se.conv_expand.weight", "se.conv2.conv.weight"), ("conv_pwl.weight", "linear_conv.conv.weight"),
                           ("bn3.running_mean", "linear_conv.bn.running_mean")):
        assert torch.equal(got[f"{b}.{timm_key}"], r[f"layer{layer}.{ours}"]), timm_key
    n = len(settings) + 1
    stage = len(create_backbone(name).blocks) - 1
    assert torch.equal(got[f"blocks.{stage}.0.conv.weight"], r[f"layer{n}.conv.weight"])
    # the file is a student's start: the network the 2025 recipes build loads it
    net = build_segmentor("deeplabv3", name, 19, pretrained=str(tmp_path / "out.safetensors"))
    assert torch.equal(net.backbone.conv_stem.weight, r["layer0.conv.weight"])


def test_release_mobilenetv3_import_refuses_extra_missing_and_misshapen_tensors(tmp_path):
    base = release_layout(SMALL, 576, prefix="")
    cases = {
        "extra": {**base, "layer3.se.conv1.conv.weight": torch.zeros(8, 88, 1, 1)},
        "missing": {k: v for k, v in base.items() if k != "layer5.depthwise_conv.bn.bias"},
        "shape": {**base, "layer2.linear_conv.conv.weight": torch.zeros(25, 72, 1, 1)},
        "foreign": {**base, "layer2.linear_conv.scale": torch.zeros(3)},
        "foreign_bn": {**base, "layer2.linear_conv.bn.scale": torch.zeros(24)},  # not a BatchNorm tensor
    }
    for label, state in cases.items():
        torch.save(state, tmp_path / f"{label}.pth")
        with pytest.raises(WeightsMismatch):
            import_released(tmp_path / f"{label}.pth", tmp_path / f"{label}.safetensors")
    torch.save(base, tmp_path / "ok.pth")
    with pytest.raises(WeightsMismatch, match="holds a mobilenetv3_small_100 backbone, not mobilenetv3_large_100"):
        import_released(tmp_path / "ok.pth", tmp_path / "x.safetensors", backbone="mobilenetv3_large_100")


def mobilevit_layout(prefix="backbone."):
    """mmpretrain's MobileViT-XXS (the release's models/base_models/mobilevit.py: its xx_small stages) with an
    ImageNet classifier."""
    g = torch.Generator().manual_seed(0)
    out = {}
    def conv(name, cout, cin, k, groups=1):
        out[f"{prefix}{name}.conv.weight"] = torch.randn(cout, cin // groups, k, k, generator=g)
    def bn(name, c):
        for t in ("weight", "bias", "running_mean"):
            out[f"{prefix}{name}.bn.{t}"] = torch.randn(c, generator=g)
        out[f"{prefix}{name}.bn.running_var"] = torch.rand(c, generator=g) + 0.5
        out[f"{prefix}{name}.bn.num_batches_tracked"] = torch.tensor(3)
    def lin(name, cout, cin):
        out[f"{prefix}{name}.weight"] = torch.randn(cout, cin, generator=g)
        out[f"{prefix}{name}.bias"] = torch.randn(cout, generator=g)
    def ln(name, c):
        out[f"{prefix}{name}.weight"] = torch.randn(c, generator=g)
        out[f"{prefix}{name}.bias"] = torch.randn(c, generator=g)
    def ir(name, cin, cout, expand):
        hid = cin * expand
        conv(f"{name}.conv.0", hid, cin, 1); bn(f"{name}.conv.0", hid)
        conv(f"{name}.conv.1", hid, hid, 3, groups=hid); bn(f"{name}.conv.1", hid)
        conv(f"{name}.conv.2", cout, hid, 1); bn(f"{name}.conv.2", cout)
    def mvit(name, c, dim, ffn, blocks):
        conv(f"{name}.local_rep.0", c, c, 3); bn(f"{name}.local_rep.0", c)
        conv(f"{name}.local_rep.1", dim, c, 1)
        for b in range(blocks):
            n = f"{name}.global_rep.{b}"
            ln(f"{n}.ln1", dim); lin(f"{n}.attn.qkv", 3 * dim, dim); lin(f"{n}.attn.proj", dim, dim)
            ln(f"{n}.ln2", dim); lin(f"{n}.ffn.layers.0.0", ffn, dim); lin(f"{n}.ffn.layers.1", dim, ffn)
        ln(f"{name}.global_rep.{blocks}", dim)
        conv(f"{name}.conv_proj", c, dim, 1); bn(f"{name}.conv_proj", c)
        conv(f"{name}.conv_fusion", c, 2 * c, 3); bn(f"{name}.conv_fusion", c)
    conv("stem", 16, 3, 3); bn("stem", 16)
    cin = 16
    for i, st in enumerate([("mobilenetv2", 16, 1, 2), ("mobilenetv2", 24, 3, 2), ("mobilevit", 48, 64, 128, 2, 2),
                            ("mobilevit", 64, 80, 160, 4, 2), ("mobilevit", 80, 96, 192, 3, 2)]):
        if st[0] == "mobilenetv2":
            _, c, blocks, e = st
            for b in range(blocks):
                ir(f"layers.{i}.{b}", cin, c, e); cin = c
        else:
            _, c, dim, ffn, blocks, e = st
            ir(f"layers.{i}.0", cin, c, e); mvit(f"layers.{i}.1", c, dim, ffn, blocks); cin = c
    conv("conv_1x1_exp", 320, 80, 1); bn("conv_1x1_exp", 320)
    lin("head.fc", 1000, 320)
    return out


def test_release_mobilevit_maps_each_tensor_onto_its_timm_module(tmp_path):
    released = mobilevit_layout()
    torch.save({"state_dict": released}, tmp_path / "mvit.pth")
    report = import_released(tmp_path / "mvit.pth", tmp_path / "mvit.safetensors")
    assert (report.kind, report.backbone, report.ignored) == ("backbone", "mobilevit_xxs", ["head.fc.bias", "head.fc.weight"])
    assert report.build_args["normalization"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "bgr": True, "scale": 1.0}
    got = _imported(tmp_path / "mvit.safetensors")
    r = {k.removeprefix("backbone."): v for k, v in released.items()}
    pairs = {"stem.conv.weight": "stem.conv.weight",
             "stages_0.0.conv1_1x1.conv.weight": "layers.0.0.conv.0.conv.weight",
             "stages_0.0.conv2_kxk.conv.weight": "layers.0.0.conv.1.conv.weight",
             "stages_2.1.conv_kxk.conv.weight": "layers.2.1.local_rep.0.conv.weight",
             "stages_2.1.conv_1x1.weight": "layers.2.1.local_rep.1.conv.weight",
             "stages_2.1.transformer.0.norm1.weight": "layers.2.1.global_rep.0.ln1.weight",
             "stages_2.1.transformer.0.attn.qkv.weight": "layers.2.1.global_rep.0.attn.qkv.weight",
             "stages_2.1.transformer.1.norm2.bias": "layers.2.1.global_rep.1.ln2.bias",
             "stages_2.1.transformer.1.mlp.fc1.weight": "layers.2.1.global_rep.1.ffn.layers.0.0.weight",
             "stages_2.1.transformer.1.mlp.fc2.bias": "layers.2.1.global_rep.1.ffn.layers.1.bias",
             "stages_2.1.norm.weight": "layers.2.1.global_rep.2.weight",
             "stages_4.1.conv_fusion.conv.weight": "layers.4.1.conv_fusion.conv.weight",
             "final_conv.conv.weight": "conv_1x1_exp.conv.weight", "final_conv.bn.running_var": "conv_1x1_exp.bn.running_var"}
    for timm_key, ours in pairs.items():
        assert torch.equal(got[timm_key], r[ours]), timm_key
    net = build_segmentor("pspnet", "mobilevit_xxs", 19, pretrained=str(tmp_path / "mvit.safetensors"))
    assert torch.equal(net.backbone.final_conv.conv.weight, r["conv_1x1_exp.conv.weight"])
    assert net.build_args["normalization"]["bgr"]  # the network takes the convention of its weights


def test_release_mobilevit_import_refuses_a_missing_or_misshapen_tensor(tmp_path):
    base = mobilevit_layout(prefix="")
    missing = {k: v for k, v in base.items() if k != "layers.3.1.global_rep.4.bias"}  # its final LayerNorm
    shape = {**base, "layers.4.1.global_rep.0.attn.qkv.weight": torch.zeros(96 * 3, 95)}
    assert len(missing) == len(base) - 1
    for label, state in (("missing", missing), ("shape", shape)):
        torch.save(state, tmp_path / f"{label}.pth")
        with pytest.raises(WeightsMismatch):
            import_released(tmp_path / f"{label}.pth", tmp_path / f"{label}.safetensors")


def _student_checkpoint(trunk, model):
    """A CIRKDv2 student checkpoint: the release's backbone under `pretrained.`, heads named as ours."""
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    return {**{f"pretrained.{k}": v for k, v in trunk.items()}, **heads}


@pytest.mark.parametrize("arch, backbone", [("deeplabv3", "mobilenetv3_small_100"), ("pspnet", "mobilenetv3_large_100"),
                                            ("deeplabv3", "mobilevit_xxs"), ("pspnet", "mobilevit_xxs")])
def test_cirkdv2_mobile_students_import_with_their_heads(tmp_path, arch, backbone):
    """The release's deeplabv3_mobilenet_ssseg / psp_mobile / deeplab_mobile students: its MobileNetV3 or
    MobileViT under `pretrained.` (a student checkpoint keeps the release's module names, MobileViT's
    attention as nn.MultiheadAttention's in_proj / out_proj), 128-wide heads named as ours, no aux."""
    from afdcd_bench.models import load_segmentor

    torch.manual_seed(0)
    ours = build_segmentor(arch, backbone, 19, aux=False, head_width=128)
    if "mobilevit" in backbone:
        trunk = {k.replace("attn.qkv.", "attn.attn.in_proj_").replace("attn.proj.", "attn.attn.out_proj."): v
                 for k, v in mobilevit_layout(prefix="").items() if not k.startswith("head.")}
        first = ("stem.conv.weight", "backbone.stem.conv.weight")
    else:
        settings, last = (SMALL, 576) if "small" in backbone else (LARGE, 960)
        trunk, first = release_layout(settings, last, prefix=""), ("layer0.conv.weight", "backbone.conv_stem.weight")
    src = tmp_path / f"kd_{arch}_{backbone}_citys_best_model.pth"
    torch.save(_student_checkpoint(trunk, ours), src)
    rep = import_released(src, tmp_path / "student.safetensors")
    assert (rep.kind, rep.backbone, rep.build_args["arch"], rep.build_args["head_width"]) == ("segmentor", backbone, arch, 128)
    model = load_segmentor(tmp_path / "student.safetensors")
    state = model.state_dict()
    assert torch.equal(state[first[1]], trunk[first[0]])
    for k, v in ours.state_dict().items():
        if not k.startswith("backbone."):
            assert torch.equal(state[k], v), k
    if "mobilevit" in backbone:  # the renamed attention lands where timm's qkv is
        assert torch.equal(state["backbone.stages_2.1.transformer.0.attn.qkv.weight"],
                           trunk["layers.2.1.global_rep.0.attn.attn.in_proj_weight"])
    with pytest.raises(WeightsMismatch, match="not mobilevit_xxs|not mobilenetv3"):
        import_released(src, tmp_path / "x.safetensors", backbone="mobilevit_xxs" if "mobilenet" in backbone else "mobilenetv3_small_100")


def test_a_cirkdv2_upernet_student_imports_with_its_aux_head(tmp_path):
    from afdcd_bench.models import load_segmentor
    from test_released import _released_segmentor

    torch.manual_seed(0)
    ours = build_segmentor("upernet", "resnet18_deepstem", 150, aux=True, head_width=128).eval()
    src = tmp_path / "kd_upernet_lite_resnet18_ade20k_best_model.pth"
    torch.save(_released_segmentor(ours), src)
    rep = import_released(src, tmp_path / "student.safetensors")
    assert (rep.build_args["arch"], rep.build_args["head_width"], rep.build_args["aux"]) == ("upernet", 128, True)
    model = load_segmentor(tmp_path / "student.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, ours(x).logits)
