"""NVlabs' SegFormer layout (mit_b*.pth and CIRKDv2's SegFormer checkpoints) imported into
transformers' Segformer (models/released_mit.py): strict both ways, the key/value split and the
fusing conv's bias right by what they compute, not only by their names."""
import pytest
import torch
import torch.nn.functional as F

from afdcd_bench.models import CAFFE_NORMALIZATION, build_segmentor, load_segmentor
from afdcd_bench.models.released import import_released
from afdcd_bench.models.weights import WeightsMismatch

BLOCK = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.q_proj": "attn.q", "attention.o_proj": "attn.proj",
         "attention.sequence_reduction.sequence_reduction": "attn.sr", "attention.sequence_reduction.layer_norm": "attn.norm",
         "mlp.fc1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.fc2"}


def _nvlabs(model, head=True):
    """The model's tensors as NVlabs names them (written here from NVlabs' module names, independently of the import)."""
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key.startswith("encoder.stages."):
            stage, rest = int(parts[2]) + 1, parts[3:]
            if rest[0] == "patch_embeddings":
                out[f"patch_embed{stage}.{'proj' if rest[1] == 'proj' else 'norm'}.{rest[-1]}"] = value
            elif rest[0] == "layer_norm":
                out[f"norm{stage}.{rest[-1]}"] = value
            else:
                block, name, kind = rest[1], ".".join(rest[2:-1]), rest[-1]
                if name in ("attention.k_proj", "attention.v_proj"):
                    continue
                out[f"block{stage}.{block}.{BLOCK[name]}.{kind}"] = value
                if name == "attention.q_proj":
                    k, v = (model.state_dict()[f"encoder.stages.{stage - 1}.blocks.{block}.attention.{p}.{kind}"] for p in ("k_proj", "v_proj"))
                    out[f"block{stage}.{block}.attn.kv.{kind}"] = torch.cat([k, v])
        elif head:
            name = key.removeprefix("decoder.")
            if name.startswith("linear_projections."):
                out[f"linear_c{int(parts[2]) + 1}.proj.{parts[-1]}"] = value
            elif name == "linear_fuse.weight":
                out["linear_fuse.0.weight"] = value
            elif name.startswith("batch_norm."):
                out[f"linear_fuse.1.{parts[-1]}"] = value
            elif name.startswith("classifier."):
                out[f"linear_pred.{parts[-1]}"] = value
    return out


@pytest.fixture
def b0():
    torch.manual_seed(3)
    model = build_segmentor("segformer", "mit_b0", 7).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity's
        model.decoder.batch_norm.running_mean.uniform_(-1, 1)
        model.decoder.batch_norm.running_var.uniform_(0.5, 2)
    return model


def test_an_imagenet_mit_file_imports_as_the_encoder_it_holds_and_loads_directly(tmp_path, b0):
    file = _nvlabs(b0, head=False) | {"head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    torch.save(file, tmp_path / "mit_b0.pth")
    report = import_released(tmp_path / "mit_b0.pth", tmp_path / "mit_b0.safetensors")
    assert report.kind == "backbone" and report.backbone == "mit_b0" and report.ignored == ["head.bias", "head.weight"]
    for source in ("mit_b0.safetensors", "mit_b0.pth"):  # the import, or NVlabs' file as it is
        student = build_segmentor("segformer", "mit_b0", 7, pretrained=str(tmp_path / source))
        assert all(torch.equal(a, student.encoder.state_dict()[k]) for k, a in b0.encoder.state_dict().items())
        assert student.build_args["normalization"]["std"] == [0.229, 0.224, 0.225]  # ImageNet's, as MiT was trained
    with pytest.raises(Exception, match="holds a mit_b0 encoder, not mit_b1"):
        build_segmentor("segformer", "mit_b1", 7, pretrained=str(tmp_path / "mit_b0.pth"))
    torch.save({**file, "block1.0.attn.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsMismatch, match="tensors of no MiT encoder: \\['block1.0.attn.extra.weight'\\]"):
        import_released(tmp_path / "extra.pth", tmp_path / "x.safetensors")
    torch.save({k: v for k, v in file.items() if k != "block2.1.mlp.fc2.bias"}, tmp_path / "short.pth")
    with pytest.raises(WeightsMismatch, match="missing.*stages.1.blocks.1.mlp.fc2.bias"):
        import_released(tmp_path / "short.pth", tmp_path / "y.safetensors")


def test_a_released_segformer_checkpoint_computes_what_it_computed(tmp_path, b0):
    """The release's fusing conv has a bias; its import moves it into the BatchNorm's running mean: the
    imported network's logits equal those of the network the file describes."""
    file = _nvlabs(b0)
    bias = torch.randn(256)
    file["linear_fuse.0.bias"] = bias
    file["linear_fuse.1.running_mean"] = file["linear_fuse.1.running_mean"] + bias  # the same function as b0
    torch.save(file, tmp_path / "cirkdv2_segformer_b0.pth")
    report = import_released(tmp_path / "cirkdv2_segformer_b0.pth", tmp_path / "student.safetensors")
    assert report.kind == "segmentor" and report.build_args["normalization"] == dict(CAFFE_NORMALIZATION)
    imported = load_segmentor(tmp_path / "student.safetensors").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(imported(x).logits, b0(x).logits, atol=1e-5, rtol=0)


def test_key_and_value_come_from_the_halves_nvlabs_splits_kv_into(b0):
    """NVlabs' attention, written out here from its equations, on the file's tensors, equals the
    imported block's (stage 1: spatial reduction 8, one head; stage 3: reduction 2, five heads)."""
    file = _nvlabs(b0)
    imported = build_segmentor("segformer", "mit_b0", 7)
    from afdcd_bench.models.released_mit import encoder_names

    imported.encoder.load_state_dict(encoder_names(file)[0])
    for stage, heads, sr, dim, (h, w) in ((1, 1, 8, 32, (16, 24)), (3, 5, 2, 160, (4, 6))):
        p = f"block{stage}.0.attn."
        x = torch.randn(2, h * w, dim)
        q = F.linear(x, file[p + "q.weight"], file[p + "q.bias"]).reshape(2, h * w, heads, -1).transpose(1, 2)
        reduced = F.conv2d(x.transpose(1, 2).reshape(2, dim, h, w), file[p + "sr.weight"], file[p + "sr.bias"], stride=sr)
        reduced = F.layer_norm(reduced.flatten(2).transpose(1, 2), (dim,), file[p + "norm.weight"], file[p + "norm.bias"])
        kv = F.linear(reduced, file[p + "kv.weight"], file[p + "kv.bias"]).reshape(2, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        weights = (q @ kv[0].transpose(-2, -1) * (dim // heads) ** -0.5).softmax(-1)
        want = F.linear((weights @ kv[1]).transpose(1, 2).reshape(2, h * w, dim), file[p + "proj.weight"], file[p + "proj.bias"])
        got = imported.encoder.stages[stage - 1].blocks[0].attention(x, h, w)
        got = got[0] if isinstance(got, tuple) else got
        assert torch.allclose(got, want, atol=1e-5, rtol=0), stage
