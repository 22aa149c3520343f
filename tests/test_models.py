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
