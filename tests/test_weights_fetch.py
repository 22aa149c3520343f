"""`weights fetch` without the internet: gdown fetches from a server on the loopback address (it takes
plain URLs too) files built here in the releases' layouts; the manifest, strict import, a changed
file refused, --from, a rerun that fetches nothing, a cut download resumed; the missing-weights
messages of `reproduce` and `train`."""
from __future__ import annotations

import dataclasses
import json

import pytest
import timm
import torch

from afdcd_bench.models import fetch as fetch_mod
from afdcd_bench.models.checkpoint import read_meta
from afdcd_bench.models.fetch import FetchError, fetch, select
from afdcd_bench.models.weights import sha256_file
from test_prepare import Server
from test_released import randomise, released_resnet_names


def _r18_release(seed=0) -> bytes:
    import io

    torch.manual_seed(seed)
    full = randomise(timm.create_model("resnet18", stem_width=64, stem_type="deep"))
    if seed:
        with torch.no_grad():
            full.conv1[0].weight.add_(seed)
    buf = io.BytesIO()
    torch.save(released_resnet_names(full.state_dict()), buf)
    return buf.getvalue()


@pytest.fixture
def served(monkeypatch):
    server = Server({})
    entry = dataclasses.replace(fetch_mod.BY_KEY["r18"], mirror=server.url("resnet18-imagenet.pth"))
    monkeypatch.setattr(fetch_mod, "RELEASED", (entry,))
    yield server, entry
    server.close()


def test_fetch_records_imports_and_never_fetches_again(tmp_path, served):
    server, entry = served
    body = _r18_release()
    server.files["resnet18-imagenet.pth"] = body
    logs = []
    (dst,) = fetch(select(True, [], []), tmp_path, show_progress=False, log=logs.append)
    assert dst == tmp_path / "resnet18_deepstem.safetensors" and dst.is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())["resnet18-imagenet.pth"]
    raw = tmp_path / "downloads" / "resnet18-imagenet.pth"
    assert manifest["sha256"] == sha256_file(raw) == read_meta(dst)["source_sha256"] and manifest["size"] == len(body)
    assert any("publishes no checksum" in line for line in logs)
    count = len(server.requests)
    again = []
    fetch(select(True, [], []), tmp_path, show_progress=False, log=again.append)
    assert len(server.requests) == count and any("imported from the recorded file" in line for line in again)


def test_a_changed_file_is_refused_unless_accepted(tmp_path, served):
    server, entry = served
    server.files["resnet18-imagenet.pth"] = _r18_release()
    fetch(select(True, [], []), tmp_path, show_progress=False, log=lambda s: None)
    first = json.loads((tmp_path / "manifest.json").read_text())["resnet18-imagenet.pth"]["sha256"]
    (tmp_path / "resnet18_deepstem.safetensors").unlink()
    (tmp_path / "downloads" / "resnet18-imagenet.pth").unlink()
    server.files["resnet18-imagenet.pth"] = _r18_release(seed=1)
    with pytest.raises(FetchError, match=rf"not the {first} recorded when it was first fetched .*--accept-changed"):
        fetch(select(True, [], []), tmp_path, show_progress=False, log=lambda s: None)
    assert not (tmp_path / "resnet18_deepstem.safetensors").exists()
    assert [p.name.split(".changed-")[0] for p in (tmp_path / "downloads").glob("*.changed-*")] == ["resnet18-imagenet.pth"]
    fetch(select(True, [], []), tmp_path, accept_changed=True, show_progress=False, log=lambda s: None)
    assert json.loads((tmp_path / "manifest.json").read_text())["resnet18-imagenet.pth"]["sha256"] != first


class _Planted:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("bad", ["wrong tensors", "truncated", "code"])
def test_a_first_file_that_fails_its_import_is_never_the_reference(tmp_path, served, bad):
    import io

    server, entry = served
    good = _r18_release()
    planted = tmp_path / "planted-by-the-pickle"
    if bad == "wrong tensors":
        buf = io.BytesIO()
        torch.save({"conv1.weight": torch.zeros(3)}, buf)
        body = buf.getvalue()
    elif bad == "truncated":
        body = good[: len(good) // 3]
    else:
        buf = io.BytesIO()
        torch.save({"conv1.weight": _Planted(planted)}, buf)
        body = buf.getvalue()
    given = tmp_path / "given"
    given.mkdir()
    (given / "resnet18-imagenet.pth").write_bytes(body)
    with pytest.raises(FetchError, match=r"resnet18-imagenet.pth \(sha256 [0-9a-f]{64}\) did not import: .*moved aside as "
                                         r".*failed-.* not recorded"):
        fetch(select(True, [], []), tmp_path / "w", from_dir=given, show_progress=False, log=lambda s: None)
    assert not planted.exists(), "nothing in the file was run"
    manifest = tmp_path / "w" / "manifest.json"
    assert not manifest.exists() or "resnet18-imagenet.pth" not in json.loads(manifest.read_text())
    assert not (tmp_path / "w" / "resnet18_deepstem.safetensors").exists()
    assert len(list((tmp_path / "w" / "downloads").glob("resnet18-imagenet.pth.failed-*"))) == 1
    (given / "resnet18-imagenet.pth").write_bytes(good)  # the right file next: taken, and it becomes the reference
    (dst,) = fetch(select(True, [], []), tmp_path / "w", from_dir=given, show_progress=False, log=lambda s: None)
    body = json.loads(manifest.read_text())["resnet18-imagenet.pth"]
    assert body["sha256"] == sha256_file(given / "resnet18-imagenet.pth")
    assert body["imported"] == {"path": "resnet18_deepstem.safetensors", "sha256": sha256_file(dst)}
    assert fetch_mod.recorded_import(dst, tmp_path / "w") == (sha256_file(dst), manifest)


def test_from_a_folder_and_a_cut_download_resumed(tmp_path, served):
    server, entry = served
    body = _r18_release()
    server.files["resnet18-imagenet.pth"] = body
    server.cut["resnet18-imagenet.pth"] = len(body) // 2
    with pytest.raises(FetchError, match="rerun to resume"):
        fetch(select(True, [], []), tmp_path / "w", show_progress=False, log=lambda s: None)
    fetch(select(True, [], []), tmp_path / "w", show_progress=False, log=lambda s: None)
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")  # resumed with a range
    assert (tmp_path / "w" / "downloads" / "resnet18-imagenet.pth").read_bytes() == body
    server.close()  # offline: the file from a folder
    given = tmp_path / "given"
    given.mkdir()
    (given / "resnet18-imagenet.pth").write_bytes(body)
    (dst,) = fetch(select(True, [], []), tmp_path / "offline", from_dir=given, show_progress=False, log=lambda s: None)
    assert read_meta(dst)["source_sha256"] == sha256_file(given / "resnet18-imagenet.pth")
    with pytest.raises(FetchError, match=r"--from .*: resnet18-imagenet.pth is not there \(the README's link: "
                                         r"https://drive.google.com/file/d/1_i0n3ZePtQuh66uQIftiSwN7QAUlFb8_/view\)"):
        fetch(select(True, [], []), tmp_path / "none", from_dir=tmp_path / "empty", show_progress=False, log=lambda s: None)


def test_the_table_of_released_files_and_what_selects_them():
    keys = [r.key for r in select(False, [], [])]
    # the backbones by default (MobileNetV3, MobileViT and MiT: CIRKDv2's students)
    assert keys == ["r101", "r18", "mbv2", "mbv3_small", "mbv3_large", "mobilevit_xxs", "mit_b0", "mit_b4"]
    assert [r.key for r in select(False, ["cityscapes"], ["voc"])] == ["cityscapes-teacher", "cityscapes-segformer-teacher",
                                                                        "voc-afdcd-r18", "voc-afdcd-psp18", "voc-cirkdv2-mbv3s",
                                                                        "voc-cirkdv2-mbv3l", "voc-cirkdv2-psp_mbv3s", "voc-cirkdv2-psp_mbv3l"]
    assert len(select(False, ["all"], ["all"])) == 6 + 8 + 19  # teachers, Af-DCD students, every CIRKDv2 student
    assert [r.key for r in select(False, [], ["ade20k"])] == ["ade20k-afdcd-r18", "ade20k-cirkdv2-r18", "ade20k-cirkdv2-upernet18",
                                                               "ade20k-cirkdv2-mbv3l", "ade20k-cirkdv2-psp_mbv3l"]
    assert fetch_mod.BY_KEY["mit_b0"].url == "https://github.com/winycg/CIRKD/releases/download/backbonev0.1/mit_b0.pth"
    assert fetch_mod.BY_KEY["mbv3_small"].url.endswith("backbonev0.1/mobilenet_v3_small-47085aa1.pth")
    assert fetch_mod.BY_KEY["mobilevit_xxs"].dst == "mobilevit_xxs.safetensors"  # where the 2025 recipes look
    with pytest.raises(FetchError, match="no released files for 'kitti'"):
        select(False, ["kitti"], [])
    # the README links one file for two rows twice: said on those entries
    shared = [r.key for r in fetch_mod.RELEASED if r.note]
    assert shared == ["cityscapes-afdcd-r18", "cityscapes-afdcd-mbv2", "voc-afdcd-psp18", "camvid-afdcd-psp18"]


def test_missing_weights_are_named_with_the_fetch_command_before_anything_runs(tmp_path, monkeypatch):
    from afdcd_bench.harness.reproduce import ReproduceError, reproduce
    from afdcd_bench.models import PretrainedWeightsError, build_segmentor

    monkeypatch.setenv("AFDCD_WEIGHTS", str(tmp_path / "none"))
    from test_cli import _fake_cityscapes

    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    missing = tmp_path / "weights"
    with pytest.raises(ReproduceError) as err:
        reproduce("cityscapes", seeds=1, data_root=str(root), results_dir=str(tmp_path / "res"), output_dir=str(tmp_path / "runs"),
                  only="deeplabv3_resnet18", methods=["kd"], extra=[f"student.pretrained={missing}/resnet18_deepstem.safetensors"])
    text = str(err.value)
    assert text.startswith("nothing was started: 1 problem(s) found before the first run")
    assert f"weights file {missing}/resnet18_deepstem.safetensors (for cityscapes/" in text
    assert "is missing: `afdcd-bench weights fetch` downloads" in text
    assert not (tmp_path / "runs").exists()
    with pytest.raises(PretrainedWeightsError, match=r"afdcd-bench weights fetch` downloads and imports it .*--from DIR"):
        build_segmentor("deeplabv3", "resnet18_deepstem", 19, pretrained=str(missing / "resnet18_deepstem.safetensors"))


def test_a_dry_run_plans_and_says_the_missing_data_and_weights_a_start_would_stop_on(tmp_path, monkeypatch):
    from rich.console import Console

    from afdcd_bench.harness.reproduce import reproduce

    monkeypatch.setenv("AFDCD_WEIGHTS", str(tmp_path / "none"))
    console = Console(record=True, width=250)
    missing = tmp_path / "weights"
    reproduce("cityscapes", seeds=1, data_root=str(tmp_path / "no-data"), results_dir=str(tmp_path / "res"), dry_run=True,
              only="deeplabv3_resnet18", methods=["kd"], console=console,
              extra=[f"student.pretrained={missing}/resnet18_deepstem.safetensors"])
    text = " ".join(console.export_text().split())
    assert "a start would stop here: cityscapes:" in text and str(tmp_path / "no-data") in text
    assert f"a start would stop here: weights file {missing}/resnet18_deepstem.safetensors" in text
    assert "cityscapes/deeplabv3_resnet18/kd@seed0" in text  # planned all the same
    assert not (tmp_path / "res" / "plan.json").exists()


def test_a_released_checkpoint_is_scored_by_this_suites_evaluator_and_shown_beside_the_runs(tmp_path, monkeypatch, capsys):
    from afdcd_bench.cli import main
    from afdcd_bench.harness.released_scores import score_released, with_released
    from afdcd_bench.harness.table import records_frame, render, summary
    from afdcd_bench.models import build_segmentor, save_segmentor
    from test_budget import _record
    from test_cli import _fake_cityscapes

    weights = tmp_path / "weights"
    monkeypatch.setenv("AFDCD_WEIGHTS", str(weights))
    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    res = tmp_path / "res"
    with pytest.raises(FileNotFoundError, match=r"not fetched yet: .*`afdcd-bench weights fetch --released cityscapes` gets them"):
        score_released("cityscapes", res, str(root), keys=["cityscapes-afdcd-r18"])
    torch.manual_seed(0)
    model = build_segmentor("deeplabv3", "resnet18_deepstem", 19, aux=True, head_width=128).eval()  # as imported
    ckpt = weights / "released" / "cityscapes_afdcd_deeplabv3_resnet18_deepstem.safetensors"
    ckpt.parent.mkdir(parents=True)
    save_segmentor(model, ckpt)
    (path,) = score_released("cityscapes", res, str(root), keys=["cityscapes-afdcd-r18"], log=lambda s: None)
    rec = json.loads(path.read_text())
    assert (rec["kind"], rec["recipe"], rec["split"], rec["images"], rec["published_miou"]) == (
        "afdcd-bench-released", "cityscapes/deeplabv3_resnet18/afdcd", "val", 2, 77.03)
    # the same number `afdcd-bench eval` gives for that checkpoint under that recipe
    capsys.readouterr()
    assert main(["eval", "cityscapes/deeplabv3_resnet18/afdcd", "--checkpoint", str(ckpt), f"data.root={root}"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == rec["miou"]
    _record(res, "cityscapes/deeplabv3_resnet18/afdcd", 0, 0.5)
    table = with_released(summary(records_frame(res)), res)
    row = table[table["method"] == "afdcd"].iloc[0]
    assert row["released"] == pytest.approx(100 * rec["miou"])
    from rich.console import Console

    console = Console(record=True, width=250)
    render(table, console)
    assert "released (measured)" in console.export_text()


def test_a_missing_teacher_names_the_released_one():
    from afdcd_bench.config import load_recipe
    from afdcd_bench.engine.building import load_teacher

    cfg = load_recipe("cityscapes/deeplabv3_resnet18/kd", ["teacher.checkpoint=/nonexistent/teacher.safetensors"])
    with pytest.raises(FileNotFoundError, match=r"weights fetch --teachers cityscapes` then teacher.checkpoint=.*"
                                                r"teachers/cityscapes_deeplabv3_resnet101_deepstem.safetensors"):
        load_teacher(cfg)
