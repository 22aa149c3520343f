"""A printed number is the number of the run it claims: one run, one record, by settings, teacher
content and launch; records checked against themselves; checkpoints checked against records."""
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

from afdcd_bench.config import load_recipe
from afdcd_bench.engine import train
from afdcd_bench.engine.identity import file_sha256, planned_identity, single_process_launch
from afdcd_bench.engine.records import RecordError, read_record, read_records, record_path
from afdcd_bench.engine.run_folder import RunFolderError
from afdcd_bench.harness.qualitative import CheckpointMismatch, check_checkpoints
from afdcd_bench.harness.reproduce import ReproduceError, _existing_record, reproduce
from afdcd_bench.harness.table import DuplicateRuns, records_frame, summary
from afdcd_bench.models import load_segmentor, save_segmentor

from conftest import TINY, reset_accelerate

ROOT = Path(__file__).resolve().parents[1]


def _train(overrides, **kw):
    try:
        return train(load_recipe(overrides[0], overrides[1:]), show_progress=False, **kw)
    finally:
        reset_accelerate()


def _retrained(path: Path) -> None:
    """The teacher file at the same path, with other weights (a retrained teacher)."""
    model = load_segmentor(path)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_segmentor(model, path)


# 1: what a run writes is never a tracked file

def test_every_place_a_run_writes_is_ignored_by_git_and_committed_results_live_apart():
    tracked = subprocess.run(["git", "ls-files", "results", "runs"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert tracked and all(p.startswith(("results/reference/", "results/gpu/")) for p in tracked)
    assert any(p.startswith("results/reference/demo/") for p in tracked)
    written = ["results/demo/table.csv", "results/demo/demo__kd__seed0.json", "results/demo/figures/a.png",
               "results/cityscapes/table.md", "results/demo-quick/table.csv", "results/adhoc/x__seed0.json",
               "runs/demo/kd/seed0/final.safetensors"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == written


# 2: a student names its teacher by content; a changed teacher or token file is another run

def test_a_student_record_names_its_teacher_by_content_and_a_retrained_teacher_is_refused(tmp_path, teacher):
    mine = tmp_path / "teacher.safetensors"
    shutil.copy(teacher, mine)
    shutil.copy(teacher.with_suffix(".json"), mine.with_suffix(".json"))
    args = ["demo/kd", *TINY, f"teacher.checkpoint={mine}", f"output_dir={tmp_path / 'runs'}"]
    rec = _train(args, results_dir=tmp_path / "res")
    assert rec["inputs"] == {"teacher.checkpoint": file_sha256(mine)}
    assert read_record(Path(rec["record_path"]))["inputs"]["teacher.checkpoint"] == rec["inputs"]["teacher.checkpoint"]
    cfg = load_recipe("demo/kd", args[1:])
    console = _quiet()
    assert _existing_record(Path(rec["record_path"]), "demo/kd", 0, planned_identity(cfg, single_process_launch(cfg)), console)
    _retrained(mine)
    with pytest.raises(ReproduceError, match=r"other settings \(inputs.teacher.checkpoint: '[0-9a-f]{64}' -> '[0-9a-f]{64}'\)"):
        _existing_record(Path(rec["record_path"]), "demo/kd", 0, planned_identity(cfg, single_process_launch(cfg)), console)
    # the finished run in its folder is not continued with the other teacher either, and says it is finished
    with pytest.raises(RunFolderError, match=r"holds a finished run with other settings \(inputs.teacher.checkpoint"):
        _train(args)


def _quiet():
    import os

    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def test_reproduce_opens_the_given_teacher_before_anything_runs(tmp_path, teacher):
    with pytest.raises(ReproduceError, match=r"--teacher .*nope.safetensors: checkpoint .* not found"):
        reproduce("demo", teacher=str(tmp_path / "nope.safetensors"), results_dir=str(tmp_path / "res"), console=_quiet())
    # the session teacher is a ResNet-10t; the demo recipes distil from a ResNet-34
    with pytest.raises(ReproduceError, match=r"is a deeplabv3-resnet10t for 11 classes, but demo/\w+ distils from a deeplabv3-resnet34"):
        reproduce("demo", teacher=str(teacher), results_dir=str(tmp_path / "res"), console=_quiet())
    assert not (tmp_path / "res").exists() and not list(tmp_path.glob("**/*.safetensors"))


# 4: a record of other settings is never replaced

def test_train_refuses_to_replace_the_record_of_a_run_with_other_settings(tmp_path):
    runs, res = tmp_path / "runs", tmp_path / "res"
    first = _train(["demo/baseline", *TINY, f"output_dir={runs}"], results_dir=res)
    path = Path(first["record_path"])
    before = path.read_text()
    assert first["checkpoint_sha256"] == file_sha256(runs / "demo/baseline/seed0/final.safetensors")
    assert first["best_checkpoint_sha256"] == file_sha256(runs / "demo/baseline/seed0/best.safetensors")
    for resume in (True, False):  # an lr sweep, with and without --no-resume
        with pytest.raises(RunFolderError, match=rf"{path} is the record of a run with other settings \(train.lr: 0.01 -> 0.02\)"):
            _train(["demo/baseline", *TINY, f"output_dir={runs}", "train.lr=0.02"], results_dir=res, resume=resume)
    assert path.read_text() == before
    assert not list((runs / "demo/baseline").glob("seed0.replaced-*"))  # the refused run moved nothing aside
    # written beside it, as the message says: another results folder and run folder
    other = _train(["demo/baseline", *TINY, f"output_dir={tmp_path / 'runs2'}", "train.lr=0.02"], results_dir=tmp_path / "res2")
    assert other["config"]["train"]["lr"] == 0.02 and path.read_text() == before


# 7: labels that lie

def test_fp16_on_a_cpu_is_refused_rather_than_recorded(tmp_path):
    with pytest.raises(ValueError, match="train.mixed_precision=fp16 needs a CUDA device"):
        _train(["demo/baseline", *TINY, f"output_dir={tmp_path}", "train.mixed_precision=fp16"])


def test_a_run_is_not_continued_under_another_launch(tmp_path):
    args = ["demo/baseline", *TINY, f"output_dir={tmp_path}", "train.iterations=2"]
    rec = _train(args, results_dir=tmp_path / "res")
    assert (rec["num_processes"], rec["per_device_batch"], rec["grad_accumulation"]) == (1, 4, 1)
    with pytest.raises(RunFolderError, match=r"finished run with other settings \(launch.grad_accumulation: 1 -> 2; "
                                             r"launch.per_device_batch: 4 -> 2\)"):
        _train(args, per_device_batch=2)
    assert read_record(Path(rec["record_path"]))["per_device_batch"] == 4


# 3: a row's runs are distinct runs of one launch

def _write(folder: Path, recipe: str, seed: int, miou: float, **facts) -> Path:
    from afdcd_bench.config import to_dict
    from afdcd_bench.engine.records import write_record

    cfg = load_recipe(recipe, [f"train.seed={seed}"])
    return write_record(record_path(folder, recipe, seed), {
        "kind": "afdcd-bench-run", "recipe": recipe, "benchmark": cfg.benchmark, "method": cfg.method.name,
        "student": f"{cfg.student.arch}-{cfg.student.backbone}", "seed": seed, "config": to_dict(cfg),
        "final_miou": miou, "best_miou": miou, "history": [{"step": 100, "miou": miou}], "inputs": {},
        "num_processes": 1, "per_device_batch": cfg.train.effective_batch, "grad_accumulation": 1, **facts})


def test_the_same_runs_found_twice_count_once_and_two_different_records_of_one_run_are_refused(tmp_path):
    for seed, v in enumerate((0.3657, 0.2919, 0.3789)):
        _write(tmp_path / "a", "demo/baseline", seed, v)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    problems: list[str] = []
    row = summary(records_frame(tmp_path, problems)).iloc[0]
    assert row["n"] == 3 and row["best_std"] == pytest.approx(statistics.stdev([36.57, 29.19, 37.89]))  # not n=6, std 4.20
    assert len(problems) == 3 and all("counted once" in p for p in problems)
    _write(tmp_path / "b", "demo/baseline", 1, 0.30)  # another measurement of the same run
    with pytest.raises(DuplicateRuns, match=r"a/demo__baseline__seed1.json and .*b/demo__baseline__seed1.json are two different records"):
        records_frame(tmp_path, [])


def test_a_run_of_another_launch_is_its_own_row_and_says_its_launch(tmp_path):
    for seed, v in enumerate((0.30, 0.32, 0.34)):
        _write(tmp_path, "demo/baseline", seed, v)
    _write(tmp_path / "ddp", "demo/baseline", 0, 0.50, num_processes=2, per_device_batch=4)
    t = summary(records_frame(tmp_path))
    assert sorted(zip(t["launch"], t["n"])) == [("1x8", 3), ("2x4", 1)]
    assert t.set_index("launch").loc["1x8", "best_mean"] == pytest.approx(32.0)


# 5: records agree with themselves

@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(best_miou=0.9), r"disagrees with itself: best_miou 0.9 but the best of its validation history is 0.35"),
    (lambda r: r.update(final_miou=0.1), r"disagrees with itself: final_miou 0.1 but the last validation"),
    (lambda r: r.update(published_miou=80.0), r"was changed after its run wrote it"),
])
def test_a_hand_edited_record_is_named_and_left_out(tmp_path, edit, message):
    for seed in range(2):
        _write(tmp_path, "demo/baseline", seed, 0.35, final_iou=[0.3, 0.4])
    path = record_path(tmp_path, "demo/baseline", 0)
    data = json.loads(path.read_text())
    if "changed" not in message:
        data.pop("digest")  # an edit that also removed the digest is still caught by the record's own history
    edit(data)
    path.write_text(json.dumps(data))
    problems: list[str] = []
    assert len(read_records(tmp_path, problems)) == 1
    assert len(problems) == 1 and str(path) in problems[0]
    with pytest.raises(RecordError, match=message):
        read_record(path)


def test_per_class_ious_must_average_to_the_miou(tmp_path):
    path = _write(tmp_path, "demo/baseline", 0, 0.35, final_iou=[0.3, 0.5, None])
    with pytest.raises(RecordError, match=r"final_miou 0.35 but the mean of its per-class final_iou is 0.4"):
        read_record(path)


def test_the_committed_records_agree_with_themselves():
    records = read_records(ROOT / "results/reference/demo")
    assert len(records) >= 20


# 6: a figure draws the checkpoint its record was measured on

def test_the_qualitative_figure_refuses_a_checkpoint_that_is_not_the_records(tmp_path):
    ckpt = tmp_path / "final.safetensors"
    ckpt.write_bytes(b"weights of the run")
    rec = {"_path": "r.json", "checkpoint_sha256": file_sha256(ckpt)}
    assert check_checkpoints({"kd": rec, "old": {"_path": "o.json"}}, {"kd": ckpt, "old": ckpt}) == {"old"}
    ckpt.write_bytes(b"weights of a later run")
    with pytest.raises(CheckpointMismatch, match=r"final.safetensors is not the checkpoint that r.json was measured on"):
        check_checkpoints({"kd": rec}, {"kd": ckpt})
