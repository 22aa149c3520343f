import pytest
import torch
from safetensors.torch import load_file

from afdcd_bench.models import PretrainedWeightsError, build_segmentor, load_segmentor, read_meta, save_segmentor

PAIRS = [  # every teacher and student of published_results.csv
    ("deeplabv3", "resnet101_deepstem", 2048, True),
    ("deeplabv3", "resnet18_deepstem", 512, True),
    ("deeplabv3", "resnet18", 512, True),
    ("deeplabv3", "mobilenetv2_100", 320, False),
    ("pspnet", "resnet18_deepstem", 512, True),
]


@pytest.mark.parametrize("arch,backbone,channels,has_aux", PAIRS)
def test_forward_backward_shapes(arch, backbone, channels, has_aux):
    torch.manual_seed(0)
    model = build_segmentor(arch, backbone, num_classes=5)
    x = torch.randn(2, 3, 64, 48)
    out = model(x)
    assert out.logits.shape == (2, 5, 8, 6)  # output stride 8
    assert out.features.shape == (2, channels, 8, 6)
    assert (out.aux_logits is not None) == has_aux
    if has_aux:
        assert out.aux_logits.shape == (2, 5, 8, 6)
    loss = out.logits.sum() + out.features.mean() + (out.aux_logits.sum() if has_aux else 0)
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_released_head_widths_and_param_counts():
    t = build_segmentor("deeplabv3", "resnet101_deepstem", 19)
    s = build_segmentor("deeplabv3", "resnet18_deepstem", 19)
    m = build_segmentor("deeplabv3", "mobilenetv2_100", 19)
    assert t.build_args["head_width"] == 256 and s.build_args["head_width"] == 128 and m.build_args["head_width"] == 128
    assert build_segmentor("pspnet", "resnet101_deepstem", 19).build_args["head_width"] == 512
    count = lambda net: sum(p.numel() for p in net.parameters()) / 1e6  # noqa: E731
    assert count(t) == pytest.approx(61.1, abs=0.1)
    assert count(s) == pytest.approx(13.6, abs=0.1)
    assert count(m) == pytest.approx(3.2, abs=0.1)


def test_checkpoint_round_trip_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    model = build_segmentor("pspnet", "resnet18", 7)
    model.eval()
    path = save_segmentor(model, tmp_path / "m.safetensors", {"step": 3})
    assert read_meta(path)["step"] == 3
    again = load_segmentor(path).eval()
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x).logits, again(x).logits)
    assert set(load_file(str(path))) == set(model.state_dict())


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        build_segmentor("unet", "resnet18", 3)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_segmentor("deeplabv3", "resnet19", 3)
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_segmentor("deeplabv3", "resnet18", 3, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(PretrainedWeightsError, match="import-released"):
        build_segmentor("deeplabv3", "resnet18_deepstem", 3, pretrained=True)
    with pytest.raises(FileNotFoundError):
        load_segmentor(tmp_path / "nothing.safetensors")


def test_local_pretrained_file_is_loaded(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(ref.conv1.weight, 0.5)
    save_file(ref.state_dict(), str(tmp_path / "r18.safetensors"))
    model = build_segmentor("deeplabv3", "resnet18", 3, pretrained=str(tmp_path / "r18.safetensors"))
    assert torch.all(model.backbone.conv1.weight == 0.5)


def test_timm_weights_by_name_without_network_say_how_to_use_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network, whatever this one has
    import huggingface_hub.constants

    # read once at import: without this the hub retries with backoff for ~45 s before failing
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsError, match=r"student\.pretrained=/path/resnet18\.safetensors"):
        build_segmentor("deeplabv3", "resnet18", 3, pretrained=True)


# CIRKDv2's students and SegFormer (winycg/CIRKD at dab64db): (arch, backbone, stride of logits,
# C4's channels and stride, C3's channels, head width, aux)
NETWORKS_2025 = [
    ("deeplabv3", "mobilenetv3_small_100", 8, 576, 8, 48, 128, False),
    ("deeplabv3", "mobilenetv3_large_100", 8, 960, 8, 112, 128, False),
    ("deeplabv3", "mobilevit_xxs", 8, 320, 8, 64, 128, False),
    ("pspnet", "mobilenetv3_small_100", 8, 576, 8, 48, 128, False),
    ("pspnet", "mobilevit_xxs", 8, 320, 8, 64, 128, False),
    ("upernet", "resnet18_deepstem", 8, 512, 8, 256, 128, True),
    ("segformer", "mit_b0", 4, 256, 32, 160, 256, False),
]


@pytest.mark.parametrize("arch,backbone,stride,c4,c4_stride,c3,width,has_aux", NETWORKS_2025)
def test_2025_networks_give_every_tap_at_its_stride_and_round_trip(tmp_path, arch, backbone, stride, c4, c4_stride, c3, width,
                                                                   has_aux):
    torch.manual_seed(0)
    model = build_segmentor(arch, backbone, num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.logits.shape == (2, 5, 64 // stride, 96 // stride)
    assert out.features.shape == (2, c4, 64 // c4_stride, 96 // c4_stride) and out.c3.shape[1] == c3
    assert out.head.shape == (2, width, 64 // stride, 96 // stride)  # the classifier's input
    assert (out.aux_logits is not None) == has_aux
    assert model.output_channels == {"logits": 5, "aux_logits": 5 if has_aux else None, "features": c4, "c3": c3, "head": width}
    (out.logits.sum() + out.features.mean() + (out.aux_logits.sum() if has_aux else 0)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    again = load_segmentor(save_segmentor(model, tmp_path / "m.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)


def test_upernet_head_is_the_releases_in_its_parts():
    """The lite UPerNet of CIRKDv2: pooling branches of 512 after upsampling, a 128-wide FPN over C1..C3, a
    stride-2 fusion at C1's size; its parameter count from those widths alone."""
    model = build_segmentor("upernet", "resnet18_deepstem", 19)
    head = model.head
    assert [m[0].out_channels for m in head.ppm_conv] == [512] * 4 and head.ppm_last_conv[0].in_channels == 512 + 4 * 512
    assert [m[0].in_channels for m in head.fpn_in] == [64, 128, 256] and head.conv_last[0][0].stride == (2, 2)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    want = (4 * conv_bn(512, 512, 1) + conv_bn(512 + 4 * 512, 128, 3) + sum(conv_bn(c, 128, 1) for c in (64, 128, 256))
            + 3 * conv_bn(128, 128, 3) + conv_bn(4 * 128, 128, 3) + 128 * 19 + 19)
    assert count(head) == want
    assert build_segmentor("upernet", "resnet18_deepstem", 19, head_width=512).build_args["head_width"] == 512  # the full one


def test_segformer_is_nvlabs_mit_in_sizes_and_norms():
    """MiT-B0's and B4's parameter counts (the SegFormer paper: 3.8M and 64.1M with the decoder), NVlabs'
    LayerNorm eps, no dropout before the classifier, and the decoder's width fixed by the encoder."""
    import torch.nn as nn

    count = lambda net: sum(p.numel() for p in net.parameters()) / 1e6  # noqa: E731
    b0 = build_segmentor("segformer", "mit_b0", 19)
    assert count(b0) == pytest.approx(3.7, abs=0.1)
    with torch.device("meta"):
        assert count(build_segmentor("segformer", "mit_b4", 19)) == pytest.approx(64.0, abs=0.2)
    eps = {n: m.eps for n, m in b0.named_modules() if isinstance(m, nn.LayerNorm)}
    assert {e for n, e in eps.items() if "patch_embeddings" in n or "sequence_reduction" in n} == {1e-5}
    assert {e for n, e in eps.items() if "patch_embeddings" not in n and "sequence_reduction" not in n} == {1e-6}
    assert b0.decoder.dropout.p == 0.0 and b0.build_args["head_width"] == 256
    with pytest.raises(ValueError, match="the decoder is 256 wide, not 128"):
        build_segmentor("segformer", "mit_b0", 19, head_width=128)
    with pytest.raises(ValueError, match="unknown SegFormer encoder 'mit_b9'"):
        build_segmentor("segformer", "mit_b9", 19)
    with pytest.raises(ValueError, match="segformer has no aux head"):
        build_segmentor("segformer", "mit_b0", 19, aux=True)
    import copy  # a deep copy (ZeRO-3's full weights) gives its own head feature, the original's untouched

    twin = copy.deepcopy(b0.eval())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(twin(x).head, b0(x).head) and not b0._head and not twin._head
