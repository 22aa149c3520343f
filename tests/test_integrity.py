"""What a newcomer ran into: every way a wrong number, a lost run or a traceback could reach a user."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afdcd_bench.cli import main
from afdcd_bench.config import ConfigError, load_recipe, to_dict
from afdcd_bench.engine import train
from afdcd_bench.engine.records import RecordError, read_records, record_path, write_record
from afdcd_bench.engine.run_folder import RunFolderError, RunLock
from afdcd_bench.harness.reproduce import ReproduceError, _existing_record, output_folder
from afdcd_bench.harness.table import records_frame, summary
from afdcd_bench.models import build_segmentor, save_segmentor

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.crop_size=[32, 32]", "train.iterations=2", "train.effective_batch=2", "train.val_interval=2",
        "train.checkpoint_interval=2", "student.backbone=resnet10t", "eval.batch_size=100",
        "student.pretrained=false"]


def _reset():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _record(folder, recipe, seed, miou, overrides=()):
    cfg = load_recipe(recipe, [f"train.seed={seed}", *overrides])
    return write_record(record_path(folder, recipe, seed), {
        "kind": "afdcd-bench-run", "recipe": recipe, "benchmark": cfg.benchmark, "method": cfg.method.name,
        "student": f"{cfg.student.arch}-{cfg.student.backbone}", "seed": seed, "config": to_dict(cfg),
        "final_miou": miou, "best_miou": miou, "wall_seconds": 1.0, "history": [{"step": 1, "miou": miou}], "published_miou": None,
        "inputs": {}, "num_processes": 1, "per_device_batch": cfg.train.effective_batch, "grad_accumulation": 1,
    })


# 1, 2: a run folder holds one run, of one set of settings

def test_quick_and_full_reproductions_never_share_run_folders():
    full, quick = output_folder(None, [], quick=False), output_folder(None, [], quick=True)
    assert full is None  # the recipes' own runs/
    assert quick == str(ROOT / "runs" / "quick")
    assert output_folder(None, ["output_dir=elsewhere"], quick=True) == str(Path("elsewhere").resolve())


def test_a_held_run_folder_is_refused_naming_its_holder(tmp_path):
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}"])
    lock_path = tmp_path / "demo/baseline/seed0.lock"
    lock_path.parent.mkdir(parents=True)
    holder = RunLock(lock_path)
    holder.acquire()
    try:
        with pytest.raises(RunFolderError, match=rf"in use by process {os.getpid()} on .*output_dir=PATH"):
            train(cfg, show_progress=False)
    finally:
        holder.release()
        _reset()


def test_no_resume_sets_the_old_run_aside(tmp_path):
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.iterations=1", "train.val_interval=1",
                                               "train.checkpoint_interval=1"])
    train(cfg, show_progress=False)
    _reset()
    other = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.iterations=1", "train.val_interval=1",
                                                 "train.checkpoint_interval=1", "train.lr=0.01"])
    train(other, resume=False, show_progress=False)
    _reset()
    aside = list((tmp_path / "demo/baseline").glob("seed0.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "final.safetensors").is_file()
    saved = json.loads((tmp_path / "demo/baseline/seed0/record.json").read_text())  # the finished run's record
    assert saved["config"]["train"]["lr"] == 0.01


# 3: tables never mix runs of other settings

def test_table_keeps_runs_of_other_settings_apart(tmp_path):
    for seed, v in enumerate((0.20, 0.22, 0.24)):
        _record(tmp_path / "demo", "demo/baseline", seed, v)
        _record(tmp_path / "demo", "demo/kd", seed, v + 0.01)
    _record(tmp_path / "demo-quick", "demo/baseline", 0, 0.05, ["train.iterations=60"])
    _record(tmp_path / "demo-quick", "demo/kd", 0, 0.09, ["train.iterations=60"])
    t = summary(records_frame(tmp_path))
    base = t[t.method == "baseline"].set_index("folder")
    assert base.loc["demo", "n"] == 3 and base.loc["demo", "final_mean"] == pytest.approx(22.0)
    assert base.loc["demo-quick", "n"] == 1 and base.loc["demo-quick", "final_mean"] == pytest.approx(5.0)
    kd = t[t.method == "kd"].set_index("folder")
    assert kd.loc["demo", "delta_final"] == pytest.approx(1.0) and kd.loc["demo-quick", "delta_final"] == pytest.approx(4.0)


def test_table_without_a_folder_prints_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _record(tmp_path / "results" / "demo", "demo/baseline", 0, 0.2)
    assert main(["table"]) == 0
    assert "printed only" in capsys.readouterr().out
    assert not list(tmp_path.rglob("table.*"))
    assert main(["table", "results/demo"]) == 0 and (tmp_path / "results/demo/table.csv").is_file()
    assert main(["table", "nowhere"]) == 2 and "nowhere does not exist" in capsys.readouterr().err


# 4: damaged records are named, and reproduce reruns them

@pytest.mark.parametrize("damage, message", [
    (lambda d: "{" + json.dumps(d)[1:40], "not valid JSON"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "benchmark"}), "has no 'benchmark'"),
    (lambda d: json.dumps({**d, "final_miou": "0.5"}), "'final_miou' is '0.5', not a number"),
])
def test_damaged_records_are_named_never_skipped_silently(tmp_path, capsys, damage, message):
    good = _record(tmp_path, "demo/baseline", 0, 0.2)
    bad = _record(tmp_path, "demo/kd", 0, 0.3)
    bad.write_text(damage(json.loads(bad.read_text())))
    with pytest.raises(RecordError, match=message):
        read_records(tmp_path)
    problems = []
    assert [r["_path"] for r in read_records(tmp_path, problems)] == [str(good)]
    assert len(problems) == 1 and str(bad) in problems[0]
    assert main(["table", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"skipped run record {bad}" in err and "Traceback" not in err


def test_reproduce_moves_a_damaged_record_aside_and_refuses_one_of_other_settings(tmp_path):
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"))
    cfg = load_recipe("demo/baseline", ["train.seed=0"])
    path = _record(tmp_path, "demo/baseline", 0, 0.2)
    path.write_text(path.read_text()[:50])
    assert _existing_record(path, "demo/baseline", 0, _settings(cfg), console) is None
    assert not path.exists() and len(list(tmp_path.glob("demo__baseline__seed0.json.damaged-*"))) == 1
    _record(tmp_path, "demo/baseline", 0, 0.2, ["train.iterations=60"])
    with pytest.raises(ReproduceError, match=r"other settings \(train.iterations: 60 -> 100\)"):
        _existing_record(path, "demo/baseline", 0, _settings(cfg), console)
    _record(tmp_path, "demo/baseline", 0, 0.2, ["output_dir=/elsewhere", "data.num_workers=3"])  # locations only
    assert _existing_record(path, "demo/baseline", 0, _settings(cfg), console) is not None


def _settings(cfg):
    from afdcd_bench.engine.identity import planned_identity, single_process_launch

    return planned_identity(cfg, single_process_launch(cfg))


# 5: values out of range stop at load time, with the dotted key

@pytest.mark.parametrize("override, key", [
    ("train.iterations=-5", "train.iterations"), ("data.crop_size=[0,0]", r"data.crop_size\[0\]"),
    ("train.effective_batch=0", "train.effective_batch"), ("train.lr=0", "train.lr"), ("train.val_interval=0", "train.val_interval"),
    ("data.scale_range=[2.0,0.5]", "data.scale_range"), ("eval.scales=[]", "eval.scales"), ("eval.batch_size=0", "eval.batch_size"),
    ("method.afdcd.mask_ratio=1.0", "method.afdcd.mask_ratio"), ("data.crop_size=[16,16]", "method.afdcd.patch"),
    ("eval.mode=slide", "eval.crop_size"),
])
def test_out_of_range_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_recipe("demo/afdcd", [override])


def test_models_size_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "--size", "0x0"])
    assert exc.value.code == 2 and "size must be positive" in capsys.readouterr().err


# 6, 10: damaged or hostile weight files are one sentence naming the file

def test_damaged_checkpoints_name_the_file(tmp_path, capsys):
    ckpt = save_segmentor(build_segmentor("deeplabv3", "resnet10t", 11, head_width=16), tmp_path / "m.safetensors")
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    assert main(["eval", "demo/baseline", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt} is not a readable safetensors file" in err and "Traceback" not in err
    ckpt.with_suffix(".json").write_text("{broken")
    assert main(["eval", "demo/baseline", "--checkpoint", str(ckpt)]) == 2
    assert f"{ckpt.with_suffix('.json')} is not valid JSON" in capsys.readouterr().err
    garbage = tmp_path / "w.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert main(["train", "demo/baseline", f"student.pretrained={garbage}", f"output_dir={tmp_path}"]) == 2
    assert f"{garbage} is not a readable safetensors file" in capsys.readouterr().err
    _reset()


class _Executes:
    def __reduce__(self):
        return (os.system, ("true",))


def test_import_released_refuses_a_hostile_pickle_in_one_sentence(tmp_path, capsys):
    hostile, truncated = tmp_path / "hostile.pth", tmp_path / "truncated.pth"
    torch.save({"layer1.0.conv1.weight": _Executes()}, hostile)
    torch.save({"w": torch.zeros(4)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert main(["import-released", str(hostile), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"afdcd-bench: error: {hostile} holds objects other than tensors and was not loaded (nothing in it was run)"
    assert main(["import-released", str(truncated), str(tmp_path / "out.safetensors")]) == 2
    assert "is truncated or not a torch file" in capsys.readouterr().err


# 7: a corrupt image seen by a loader worker is one line

def test_corrupt_image_in_a_loader_worker_is_one_line(tmp_path, capsys):
    from test_cli import _fake_cityscapes

    root = tmp_path / "cityscapes"
    _fake_cityscapes(root)
    bad = next((root / "leftImg8bit" / "train").rglob("*.png"))
    bad.write_bytes(b"not a png")
    rc = main(["train", "cityscapes/deeplabv3_resnet18/baseline", f"data.root={root}", "data.num_workers=2", "student.pretrained=false",
               "student.backbone=resnet10t", "data.crop_size=[64,64]", "train.iterations=1", "train.effective_batch=2",
               "train.mixed_precision=no", f"output_dir={tmp_path / 'runs'}", "--results-dir", str(tmp_path / "res")])
    _reset()
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot read image {bad}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# 8, 11, 12: Ctrl-C says how to resume; logs are not silent off a terminal

def test_ctrl_c_says_how_to_resume_and_logs_keep_coming(tmp_path, capsys, monkeypatch):
    import afdcd_bench.engine.loop as tr  # the step loop calls the update

    monkeypatch.setenv("AFDCD_LOG_SECONDS", "0")
    orig, calls = tr.backward_and_step, {"n": 0}

    def interrupted_in_step_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(*args, **kwargs)

    monkeypatch.setattr(tr, "backward_and_step", interrupted_in_step_2)
    args = ["train", "demo/baseline", *TINY, "train.checkpoint_interval=1", "train.val_interval=1", f"output_dir={tmp_path}",
            "--results-dir", str(tmp_path / "res")]
    assert main(args) == 130
    _reset()
    captured = capsys.readouterr()
    assert "demo/baseline interrupted at step 1; rerun the same command to resume from step 1" in captured.err
    assert "Traceback" not in captured.err
    assert "demo/baseline: step 1/2 (50%)" in captured.out  # a plain progress line: stdout is not a terminal here


# 9: unwritable folders are found before step 0

def test_unwritable_folders_are_found_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", "demo/baseline", *TINY, f"output_dir={blocker / 'runs'}"]) == 2
    assert "output folder (output_dir)" in capsys.readouterr().err and not (tmp_path / "res").exists()
    assert main(["train", "demo/baseline", *TINY, f"output_dir={tmp_path / 'runs'}", "--results-dir", str(blocker / "res")]) == 2
    _reset()
    assert f"results folder {blocker / 'res'} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "runs/demo/baseline/seed0/state").exists()  # nothing trained


# 13: help without torch, listings that line up, pipes that close early

def test_help_does_not_import_torch():
    code = "import sys\nfrom afdcd_bench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().endswith("False"), res.stdout + res.stderr


def test_recipes_listing_lines_up_and_names_teachers(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].index("benchmark")
    rows = [line.split()[0] for line in lines[1:]]
    assert {line[column - 2 : column] for line in lines[1:]} == {"  "} and all(line[column] != " " for line in lines[1:])
    assert max(map(len, rows)) > min(map(len, rows))  # names of several lengths, one column
    teacher = next(line for line in lines if line.startswith("demo/teacher "))
    assert teacher.split()[2:4] == ["2023", "teacher"]


def test_a_pipe_closed_early_ends_quietly():
    res = subprocess.run(f"{sys.executable} -m afdcd_bench recipes --format json | head -n 1", shell=True, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.stdout.strip() == "[" and res.stderr == ""


# 14: missing data names the folder that was used

def test_missing_data_names_the_folder_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFDCD_DATA", str(tmp_path / "env-data"))
    assert main(["reproduce", "cityscapes", "--data-root", str(tmp_path / "given")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "given") in err.splitlines()[0] and "env-data" not in err and "layout:" in err
    assert main(["data", "check", "cityscapes", "--root", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "absent does not exist" in err and "layout:" in err and "source:" in err


# 15: files others can read

def test_records_and_checkpoints_have_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        rec = _record(tmp_path, "demo/baseline", 0, 0.2)
        ckpt = save_segmentor(build_segmentor("deeplabv3", "resnet10t", 11, head_width=16), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    for path in (rec, ckpt, ckpt.with_suffix(".json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# expected and missing: a teacher checkpoint of another architecture is refused

def test_teacher_checkpoint_of_another_architecture_is_refused(tmp_path):
    ckpt = save_segmentor(build_segmentor("deeplabv3", "resnet10t", 11, head_width=16), tmp_path / "t.safetensors")
    cfg = load_recipe("demo/kd", TINY + [f"output_dir={tmp_path}", f"teacher.checkpoint={ckpt}"])
    with pytest.raises(ValueError, match="is a deeplabv3-resnet10t, but the recipe says teacher.arch=deeplabv3 teacher.backbone=resnet34"):
        train(cfg, show_progress=False)
    _reset()


def test_records_store_project_paths_relative_so_committed_records_work_in_any_clone(tmp_path):
    from afdcd_bench.config import project_root
    from afdcd_bench.config.runs import recorded_path, resolve_recorded

    inside = recorded_path(project_root() / "runs/demo/kd/seed0/final.safetensors", project_root())
    assert inside == "runs/demo/kd/seed0/final.safetensors"
    assert resolve_recorded(inside, tmp_path) == tmp_path / inside
    outside = recorded_path(tmp_path / "x.safetensors", project_root())
    assert outside == str(tmp_path / "x.safetensors") and resolve_recorded(outside, project_root()) == tmp_path / "x.safetensors"
