import pytest
import os
import json
import subprocess
from pathlib import Path


from afdcd_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_missing_benchmark_data_is_one_clear_message(tmp_path, capsys):
    rc = main(["reproduce", "cityscapes", "--data-root", str(tmp_path / "cs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "cs") in err and "leftImg8bit" in err and "cityscapes-dataset.com" in err
    assert "Traceback" not in err


def test_reproduce_sh_without_data_exits_non_zero():
    env = dict(os.environ, AFDCD_DATA="/nonexistent-data")
    res = subprocess.run([str(ROOT / "reproduce.sh"), "ade20k"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert "/nonexistent-data/ADEChallengeData2016" in res.stderr and "Traceback" not in res.stderr


def test_unknown_override_is_named(capsys):
    assert main(["train", "demo/kd", "train.lerning_rate=1"]) == 2
    assert "train.lerning_rate" in capsys.readouterr().err


def test_recipes_listing(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "demo/afdcd" in out and "demo/teacher" in out


@pytest.mark.slow
def test_demo_chain_end_to_end(tmp_path, capsys, monkeypatch):
    """From another working directory, with the run folder moved by a dotted output_dir override:
    the students find the teacher under it, and the qualitative figure finds every checkpoint."""
    from afdcd_bench.harness.reproduce import reproduce

    monkeypatch.chdir(tmp_path)
    tiny = ["data.crop_size=[32, 32]", "train.iterations=2", "train.effective_batch=2", "train.val_interval=2",
            "train.checkpoint_interval=2", "eval.batch_size=100", "student.backbone=resnet10t", "teacher.backbone=resnet10t",
            "output_dir=elsewhere/runs", "student.pretrained=false"]
    out = reproduce("demo", seeds=1, results_dir="res", extra=tiny)
    text = capsys.readouterr().out
    for method in ("teacher", "baseline", "kd", "afdcd", "cwd+kd", "dist"):
        assert method in text
    assert out == tmp_path / "res"
    csv = (out / "table.csv").read_text()
    assert csv.count("\n") == 7  # header + teacher + 5 students
    assert len(list(out.glob("*__seed*.json"))) == 6 and (out / "plan.json").is_file()
    assert (tmp_path / "elsewhere/runs/demo/teacher/seed0/best.safetensors").is_file()
    import json

    kd = json.loads((out / "demo__kd__seed0.json").read_text())
    assert kd["teacher_checkpoint"] == str(tmp_path / "elsewhere/runs/demo/teacher/seed0/best.safetensors")  # outside the project: absolute
    assert main(["plot", "res", "--qualitative"]) == 0
    figure = out / "figures" / "digits__deeplabv3-resnet10t__qualitative.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"


def _fake_cityscapes(root):
    """Two train and two val images of 128x256 in the real layout, labelIds with a few classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 2)):
        for i in range(n):
            img = root / "leftImg8bit" / split / "aachen" / f"aachen_{i:06d}_000019_leftImg8bit.png"
            lab = root / "gtFine" / split / "aachen" / f"aachen_{i:06d}_000019_gtFine_labelIds.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8)).save(img)
            label = np.full((128, 256), 7, np.uint8)  # road
            label[:20] = 23  # sky
            label[40:, 60:] = 26  # car
            label[0, 0] = 0  # unlabeled -> ignore
            Image.fromarray(label).save(lab)


@pytest.mark.slow
def test_reproduce_cityscapes_on_a_tiny_fake_tree(tmp_path):
    """./reproduce.sh cityscapes --data-root PATH: the whole chain through `accelerate launch`."""
    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    tiny = ["student.pretrained=false", "data.crop_size=[128,256]", "data.num_workers=0", "train.iterations=2",
            "train.effective_batch=2", "train.val_interval=2", "train.checkpoint_interval=2", "train.mixed_precision=no"]
    res = subprocess.run(
        [str(ROOT / "reproduce.sh"), "cityscapes", "--data-root", str(root), "--seeds", "1", "--only", "deeplabv3_resnet18", "--parallel", "2",
         "--methods", "kd,afdcd",
         "--results-dir", str(tmp_path / "res"), "--output-dir", str(tmp_path / "runs"), *tiny],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = sorted(p.name for p in (tmp_path / "res").glob("*__seed*.json"))
    assert records == [f"cityscapes__{r}__seed0.json" for r in
                       ("deeplabv3_resnet18__afdcd", "deeplabv3_resnet18__baseline", "deeplabv3_resnet18__kd", "teacher")]
    # the benchmarks' default executor: each run its own `accelerate launch`, its log in its run folder
    assert json.loads((tmp_path / "res/cityscapes__teacher__seed0.json").read_text())["launch"]["executor"] == "local"
    jobs = json.loads((tmp_path / "res/jobs.json").read_text())["runs"]
    assert all("accelerate.commands.launch" in j["detail"] and j["state"] == "done" for j in jobs.values()) and len(jobs) == 4
    assert "step 2/2" in (tmp_path / "runs/cityscapes/teacher/seed0/logs/local.log").read_text()
    table = (tmp_path / "res" / "table.csv").read_text()
    # a 2-iteration smoke run is not the published schedule: no published number beside it
    assert "77.03" not in table and "78.07" not in table
    assert (tmp_path / "res" / "table.tex").is_file()


def test_eval_saves_raw_colour_and_cityscapes_label_id_predictions(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from afdcd_bench.data.benchmarks import CITYSCAPES_ID_TO_TRAINID
    from afdcd_bench.models import build_segmentor, save_segmentor

    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    save_segmentor(build_segmentor("deeplabv3", "resnet10t", 19, head_width=32), tmp_path / "m.safetensors")
    out = tmp_path / "pred"
    assert main(["eval", "cityscapes/deeplabv3_resnet18/baseline", "--checkpoint", str(tmp_path / "m.safetensors"),
                 f"data.root={root}", "--save-predictions", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["miou"] <= 1
    name = "aachen_000000_000019_leftImg8bit"
    raw = np.asarray(Image.open(out / "raw" / f"{name}.png"))
    ids = np.asarray(Image.open(out / "labelIds" / f"{name}.png"))
    colour = Image.open(out / "color" / f"{name}.png")
    assert raw.shape == (128, 256) and raw.max() < 19 and colour.mode == "P"
    to_id = {v: k for k, v in CITYSCAPES_ID_TO_TRAINID.items()}
    assert np.array_equal(ids, np.vectorize(to_id.get)(raw))
    assert np.array_equal(np.asarray(colour), raw)
    assert sorted(p.name for p in (out / "raw").iterdir()) == [f"aachen_00000{i}_000019_leftImg8bit.png" for i in range(2)]


def test_reproduce_lists_every_bad_recipe_before_the_first_run(tmp_path):
    """Smoke overrides that three recipes refuse (their discriminator needs 512-pixel crops): all named
    at once, before the teacher trains, instead of the first failure hours in."""
    from afdcd_bench.harness.reproduce import ReproduceError, reproduce

    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    with pytest.raises(ReproduceError) as err:
        reproduce("cityscapes", seeds=1, data_root=str(root), results_dir=str(tmp_path / "res"), output_dir=str(tmp_path / "runs"),
                  only="deeplabv3_resnet18", extra=["data.crop_size=[128, 256]", "student.pretrained=false"])
    text = str(err.value)
    assert text.startswith("nothing was started: 3 problem(s) found before the first run")
    lines = text.splitlines()[1:]
    for recipe in ("skd", "ifvd", "cwd"):
        assert any(line.startswith(f"- cityscapes/deeplabv3_resnet18/{recipe}: ") and
                   "method.adv: the discriminator needs logit maps of at least 64x64" in line for line in lines), recipe
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


def test_reproduce_sh_takes_relative_paths_from_the_callers_directory(tmp_path):
    env = {**os.environ, "AFDCD_LOG_SECONDS": "30"}
    res = subprocess.run([str(ROOT / "reproduce.sh"), "demo", "--dry-run", "--results-dir", "rel", "--methods", "kd"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"planned into {tmp_path / 'rel'}" in " ".join(res.stdout.split())


@pytest.mark.parametrize("argv,message", [
    (["table", "{file}"], "results folder {file} is a file, not a folder of run records"),
    (["table", "{dir}", "--out", "{file}"], "--out {file} is a file; give a folder (table.csv / .md / .tex go in it)"),
    (["plot", "{dir}", "--out", "{file}"], "--out {file} is a file; give a folder for the figures"),
    (["reproduce", "demo", "--results-dir", "{file}", "--dry-run"], "--results-dir {file} is a file; give a folder"),
    (["reproduce", "demo", "--quick", "--seeds", "5"], "--quick trains one seed (a smoke run); drop --seeds 5"),
    (["train", "demo/kd", "method.name=kd+"], "method.name: 'kd+' has an empty method name before or after a '+'"),
    (["train", "demo/kd", "method.name=baseline+kd"], "baseline is training without distillation and joins no other method"),
    (["train", "demo/kd", "train.seed=-1"], "train.seed must be >= 0, got -1"),
])
def test_bad_arguments_get_one_sentence_naming_them(tmp_path, capsys, argv, message):
    file = tmp_path / "a-file"
    file.write_text("x")
    (tmp_path / "d").mkdir()
    fill = {"file": str(file), "dir": str(tmp_path / "d")}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and "Traceback" not in err


def test_environment_variables_and_batch_flags_are_named_when_wrong(tmp_path, monkeypatch):
    from afdcd_bench.data.digits import cache_root
    from afdcd_bench.engine.launching import split_batch
    from afdcd_bench.engine.progress import log_seconds

    monkeypatch.setenv("AFDCD_LOG_SECONDS", "abc")
    with pytest.raises(ValueError, match=r"AFDCD_LOG_SECONDS='abc': expected a number of seconds >= 0"):
        log_seconds()
    monkeypatch.setenv("AFDCD_LOG_SECONDS", "-1")
    with pytest.raises(ValueError, match="AFDCD_LOG_SECONDS='-1'"):
        log_seconds()
    monkeypatch.setenv("AFDCD_LOG_SECONDS", "0")
    assert log_seconds() == 0.0  # a line at every step
    monkeypatch.setenv("AFDCD_LOG_SECONDS", "2.5")
    assert log_seconds() == 2.5
    monkeypatch.setenv("AFDCD_CACHE", "")
    with pytest.raises(ValueError, match="AFDCD_CACHE is set but empty"):
        cache_root()
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("AFDCD_CACHE", str(tmp_path / "f"))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        cache_root()
    monkeypatch.setenv("AFDCD_CACHE", str(tmp_path / "new" / "cache"))
    assert cache_root() == tmp_path / "new" / "cache" and cache_root().is_dir()
    with pytest.raises(ValueError, match="--per-device-batch must be at least 1, got 0"):
        split_batch(16, 1, 0)
    assert split_batch(16, 2, 4) == (4, 2)


def test_only_keeps_the_baselines_its_students_are_compared_with(tmp_path):
    from rich.console import Console

    from afdcd_bench.harness.reproduce import reproduce

    console = Console(record=True, width=250)
    reproduce("cityscapes", only="deeplabv3_resnet18/kd", dry_run=True, results_dir=str(tmp_path), console=console)
    keys = [line.split()[1] for line in console.export_text().splitlines() if "@seed" in line]
    assert keys == ["cityscapes/teacher@seed0", "cityscapes/deeplabv3_resnet18/baseline@seed0", "cityscapes/deeplabv3_resnet18/kd@seed0"]


def test_one_broken_recipe_is_named_and_the_others_are_still_listed(tmp_path, monkeypatch, capsys):
    import shutil

    from afdcd_bench import config

    recipes = tmp_path / "recipes"
    shutil.copytree(config.recipes_root() / "demo", recipes / "demo")
    (recipes / "demo" / "kd.yaml").write_text("extends: _student.yaml\nmethod:\n  name: kd\n  kd:\n    weight: -1\n")
    monkeypatch.setattr("afdcd_bench.config.loader.recipes_root", lambda: recipes)
    assert main(["recipes"]) == 1
    captured = capsys.readouterr()
    assert "demo/afdcd" in captured.out and "demo/kd " not in captured.out
    assert "recipe demo/kd does not load:" in captured.err and "method.kd.weight must be >= 0" in captured.err


@pytest.mark.parametrize("bench", ["cityscapes", "voc", "camvid", "ade20k", "coco_stuff_164k"])
def test_every_benchmark_has_a_smoke_schedule_with_folders_of_its_own(tmp_path, bench):
    from afdcd_bench.config import project_root
    from afdcd_bench.harness.reproduce import plan, quick_schedule, reproduce

    names = plan(bench)
    table = quick_schedule(bench, names)
    assert set(table) == set(names) and all("train.iterations=20" in extra for extra in table.values())
    import re

    from rich.console import Console

    console = Console(record=True, width=250, file=open(os.devnull, "w"))
    out = reproduce(bench, quick=True, dry_run=True, console=console)
    assert out == project_root() / "results" / f"{bench}-quick"  # apart from the real runs' folder
    rows = [line for line in console.export_text().splitlines() if "@seed" in line]
    assert rows and all(re.search(r"│\s+20\s+│", line) for line in rows), rows[:2]
