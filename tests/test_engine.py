import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from afdcd_bench.config import ConfigError, load_recipe
from afdcd_bench.engine import TrainHooks, TrainingDiverged, split_batch, train
from afdcd_bench.engine.checkpointing import latest_state
from afdcd_bench.engine.run_folder import RunFolderError
from afdcd_bench.engine.records import read_record

TINY = ["data.crop_size=[32, 32]", "train.iterations=4", "train.effective_batch=4", "train.val_interval=2",
        "train.checkpoint_interval=2", "train.log_interval=2", "student.backbone=resnet10t", "eval.batch_size=50",
        "student.pretrained=false"]


def _reset():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def test_split_batch():
    assert split_batch(16, 8, None) == (2, 1)
    assert split_batch(16, 1, 4) == (4, 4)
    with pytest.raises(ValueError):
        split_batch(16, 3, None)
    with pytest.raises(ValueError):
        split_batch(16, 2, 3)


def test_train_writes_record_and_checkpoints(tmp_path):
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'runs'}"])
    rec = train(cfg, results_dir=tmp_path / "res", show_progress=False)
    _reset()
    on_disk = json.loads((tmp_path / "res" / "demo__baseline__seed0.json").read_text())
    assert on_disk["final_miou"] == rec["final_miou"] and 0 <= rec["final_miou"] <= 1
    assert [h["step"] for h in rec["history"]] == [2, 4]
    assert rec["config_hash"] and rec["versions"]["torch"] and rec["num_processes"] == 1
    assert len(rec["final_iou"]) == 11 and rec["images_per_second"] > 0
    run = tmp_path / "runs" / "demo/baseline" / "seed0"
    assert (run / "final.safetensors").is_file() and (run / "best.safetensors").is_file()
    # finished: the resumable state is dropped (final.safetensors holds its model), the record kept beside
    assert latest_state(run) is None and not (run / "state").exists() and not (run / "state.old").exists()
    assert read_record(run / "record.json")["digest"] == on_disk["digest"]
    # a rerun trains nothing and gives the same record; so does one into another results folder
    before = (run / "final.safetensors").stat().st_mtime_ns
    again = train(cfg, results_dir=tmp_path / "res2", show_progress=False)
    _reset()
    assert json.loads((tmp_path / "res2" / "demo__baseline__seed0.json").read_text())["digest"] == on_disk["digest"]
    assert again["final_miou"] == rec["final_miou"] and (run / "final.safetensors").stat().st_mtime_ns == before
    # asked to keep it, a finished run keeps its state (no setting of the run: the same record slot)
    kept = train(load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'kept'}", "train.keep_state=true"]),
                 results_dir=tmp_path / "res3", show_progress=False)
    _reset()
    assert kept["final_miou"] == rec["final_miou"]
    assert json.loads((latest_state(tmp_path / "kept/demo/baseline/seed0") / "progress.json").read_text())["step"] == 4


def test_kill_between_checkpoints_replays_to_the_same_weights(tmp_path):
    """Killed inside step 3 (checkpoints at 2 and 4): the resumed run redoes step 3 from step 2's state."""
    full = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'a'}"])
    train(full, show_progress=False)
    _reset()
    killed = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'b'}"])
    def dies_in_step_3(micro):
        if micro == 2:  # micro-batches 0, 1 were steps 1, 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="interrupted at step 2; rerun the same command to resume from step 2"):
        train(killed, show_progress=False, hooks=TrainHooks(before_update=dies_in_step_3))
    _reset()
    run_b = tmp_path / "b/demo/baseline/seed0"
    assert json.loads((latest_state(run_b) / "progress.json").read_text())["step"] == 2
    # the stopped state is of lr 0.002: a run at another lr must not continue it
    other = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'b'}", "train.lr=0.01"])
    with pytest.raises(RunFolderError, match=r"other settings \(train.lr: 0.002 -> 0.01\).*--no-resume"):
        train(other, show_progress=False)
    _reset()
    rec = train(killed, show_progress=False)
    _reset()
    assert rec["resumed_from_step"] == 2
    # the record's wall time covers the first session up to its checkpoint as well
    assert rec["wall_seconds"] > rec["session_wall_seconds"] > 0
    a = load_file(str(tmp_path / "a/demo/baseline/seed0/final.safetensors"))
    b = load_file(str(run_b / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_clear_message(tmp_path):
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.lr=1e30", "train.iterations=6"])
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 .*no checkpoint was saved before it"):
        train(cfg, show_progress=False)  # the first step: there is no checkpoint to promise
    _reset()


def test_distillation_evaluates_teacher_and_trains(tmp_path):
    t = load_recipe("demo/teacher", TINY + [f"output_dir={tmp_path}", "student.backbone=resnet10t", "train.iterations=2"])
    train(t, show_progress=False)
    _reset()
    ckpt = tmp_path / "demo/teacher/seed0/best.safetensors"
    s = load_recipe("demo/afdcd", TINY + [f"output_dir={tmp_path}", f"teacher.checkpoint={ckpt}", "teacher.backbone=resnet10t", "train.iterations=2",
                                        "eval.teacher_check=true"])
    rec = train(s, show_progress=False)
    _reset()
    assert rec["teacher_miou"] is not None and rec["method"] == "afdcd"
    assert rec["method_terms"] == {"task": 1.0, "task_aux": 0.4, "kd": 1.0, "fd": 1e-5, "ctr": 5e-4}
    quiet = load_recipe("demo/afdcd", TINY + [f"output_dir={tmp_path / 'q'}", f"teacher.checkpoint={ckpt}",
                                             "teacher.backbone=resnet10t", "train.iterations=1"])
    assert train(quiet, show_progress=False)["teacher_miou"] is None  # the demo students skip the check
    _reset()
    assert math.isfinite(rec["final_miou"])


def _tensorboard_events(folder):
    """Every event of the TFRecord files under folder (length, crc, payload, crc per record)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[pos + 12 : pos + 12 + length])
            out.append(ev)
            pos += 12 + length + 4
    return out


def test_tracker_logs_the_config_and_the_scalars(tmp_path):
    """Any tracker Accelerate supports is named in the recipe; TensorBoard needs no network, so it is the one tested."""
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.iterations=2", "train.log_interval=1",
                                               "train.trackers=[tensorboard]"])
    rec = train(cfg, show_progress=False)
    _reset()
    assert rec["trackers"] == ["tensorboard"]
    events = _tensorboard_events(tmp_path / "demo/baseline/seed0")
    scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}
    assert ("train/lr", 1) in scalars and scalars[("train/lr", 1)] == pytest.approx(0.002)
    assert ("val/miou", 2) in scalars and scalars[("val/miou", 2)] == pytest.approx(rec["final_miou"])
    hparams = b"".join(v.metadata.plugin_data.content for e in events for v in e.summary.value if v.metadata.plugin_data.plugin_name == "hparams")
    assert b"train.lr" in hparams and b"student.backbone" in hparams  # the run's config, key by key


def test_unknown_or_missing_tracker_is_refused_before_training(tmp_path):
    from afdcd_bench.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.trackers\[0\]: unknown tracker 'tensorbord'"):
        load_recipe("demo/baseline", ["train.trackers=[tensorbord]"])
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.trackers=[aim]"])
    with pytest.raises(ValueError, match="aim not installed"):
        train(cfg, show_progress=False)
    _reset()


def test_a_test_split_is_scored_at_every_validation_and_selection_stays_on_val(tmp_path):
    """Here test = val, so the reported test scores must equal the val ones step for step."""
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "data.test_split=val"])
    rec = train(cfg, show_progress=False)
    _reset()
    assert rec["test_split"] == "val" and [h["step"] for h in rec["test_history"]] == [2, 4]
    assert rec["test_history"] == rec["history"]
    assert rec["test_miou_at_best"] == rec["best_miou"] and rec["final_test_miou"] == rec["final_miou"]
    assert rec["best_test_miou"] == max(h["miou"] for h in rec["history"])


def test_how_often_a_run_validates_changes_no_weight(tmp_path):
    """Validation draws no number from the stream that dropout (and the distillers' masks) draw from
    afterwards: a loader's iterator seeds itself from its generator, or from the global RNG without one."""
    def final(label, every):
        cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / label}", f"train.val_interval={every}",
                                                   "data.test_split=val"])
        rec = train(cfg, show_progress=False)
        _reset()
        return rec, load_file(str(tmp_path / label / "demo/baseline/seed0/final.safetensors"))

    dense_rec, dense = final("dense", 1)
    sparse_rec, sparse = final("sparse", 4)
    assert [h["step"] for h in dense_rec["history"]] == [1, 2, 3, 4] and len(sparse_rec["history"]) == 1
    assert all(torch.equal(dense[k], sparse[k]) for k in dense)
    assert dense_rec["final_miou"] == sparse_rec["final_miou"]


def test_training_seconds_leave_out_the_validations(tmp_path, monkeypatch):
    """train_seconds is what equal compute equalises and images per second divides by: steps only."""
    import time

    from afdcd_bench.engine.validation import Validation

    scores = Validation.scores
    monkeypatch.setattr(Validation, "scores", lambda self, model, loader: (time.sleep(0.5), scores(self, model, loader))[1])
    rec = train(load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.val_interval=1"]), show_progress=False)
    _reset()
    assert len(rec["history"]) == 4 and rec["eval_seconds"] >= 4 * 0.5
    assert 0 < rec["train_seconds"] <= rec["wall_seconds"] - rec["eval_seconds"]
    assert rec["images_per_second"] == pytest.approx(4 * 4 / rec["train_seconds"])


def test_the_record_says_how_long_the_loop_waited_for_its_batches(tmp_path, monkeypatch):
    """A loader slowed by 0.1 s an item (4 a batch, no workers): the wait shows per step and as a share."""
    import time

    from afdcd_bench.data.digits import DigitsDataset

    quick = train(load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'a'}"]), show_progress=False)
    _reset()
    load = DigitsDataset.load
    monkeypatch.setattr(DigitsDataset, "load",  # the training items only: validations are not waited for by steps
                        lambda self, index: (time.sleep(0.1 if self.train else 0), load(self, index))[1])
    slow = train(load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'b'}"]), show_progress=False)
    _reset()
    assert slow["data_wait_ms_per_step"] >= 4 * 100 and slow["data_wait_share"] > 0.5
    assert quick["data_wait_ms_per_step"] < slow["data_wait_ms_per_step"] / 4 and 0 <= quick["data_wait_share"] < slow["data_wait_share"]


@pytest.mark.slow
def test_speed_settings_give_the_same_weights(tmp_path):
    """channels_last, each optimiser kernel and the loader's worker settings change no number beyond
    float rounding (the loader's: none at all, each sample being seeded by itself). Dropout removed:
    it draws its mask in memory order, so NHWC drops other positions."""
    import torch.nn as nn
    from safetensors.torch import load_file

    from conftest import TINY as SGD_TINY  # SGD: Adam would turn rounding differences of tiny gradients into lr-sized steps
    from distributed_helpers import strip

    def weights(label, extra):
        cfg = load_recipe("demo/baseline", SGD_TINY + [f"output_dir={tmp_path / label}", "train.iterations=2", *extra])
        train(cfg, show_progress=False, hooks=TrainHooks(adapt_student=lambda s: strip(s, (nn.Dropout, nn.Dropout2d))))
        _reset()
        return load_file(str(tmp_path / label / "demo/baseline/seed0/final.safetensors"))

    def apart(a, b):
        return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())

    # weight decay large enough to show: at the recipe's 1e-4, two steps move the weights 2e-6, below any
    # tolerance that float rounding allows here, and a kernel that dropped it would pass unseen
    plain = weights("plain", ["train.weight_decay=0.5"])
    assert apart(plain, weights("no-decay", ["train.weight_decay=0"])) > 100 * 1e-4
    for label, extra in (("nhwc", ["train.channels_last=true"]), ("loop", ["train.optimizer_kernel=for_loop"]),
                         ("foreach", ["train.optimizer_kernel=foreach"]), ("fused", ["train.optimizer_kernel=fused"])):
        assert apart(plain, weights(label, ["train.weight_decay=0.5", *extra])) < 1e-4, label
    workers = weights("workers", ["train.weight_decay=0.5", "data.num_workers=1", "data.persistent_workers=true", "data.prefetch_factor=3",
                                  "data.pin_memory=true"])
    assert apart(plain, workers) == 0.0
    with pytest.raises(ConfigError, match="train.optimizer_kernel must be one of"):
        load_recipe("demo/baseline", ["train.optimizer_kernel=turbo"])


def test_compiling_the_projector_gives_the_same_weights_and_counts_its_compilations(tmp_path):
    import torch.nn as nn
    from safetensors.torch import load_file

    from conftest import TINY as SGD_TINY
    from distributed_helpers import strip

    def run(label, extra):
        cfg = load_recipe("demo/afdcd", SGD_TINY + [f"output_dir={tmp_path / label}", "train.iterations=2",
                                                    "teacher.backbone=resnet18", "method.afdcd.mask=center",
                                                    f"teacher.checkpoint={_teacher18(tmp_path)}", *extra])
        rec = train(cfg, show_progress=False, hooks=TrainHooks(adapt_student=lambda s: strip(s, (nn.Dropout, nn.Dropout2d))))
        _reset()
        return rec, load_file(str(tmp_path / label / "demo/afdcd/seed0/final.safetensors"))

    plain_rec, plain = run("plain", [])
    rec, compiled = run("compiled", ["train.compile=[projector]"])
    assert plain_rec["compile"] is None
    assert rec["compile"]["parts"] == ["projector"] and rec["compile"]["frames_compiled"] >= 1
    assert max((plain[k].double() - compiled[k].double()).abs().max().item() for k in plain if plain[k].is_floating_point()) < 1e-4
    with pytest.raises(ConfigError, match="train.compile: head unknown"):
        load_recipe("demo/afdcd", ["train.compile=[head]"])


def _teacher18(tmp_path):
    from afdcd_bench.models import build_segmentor, save_segmentor

    path = tmp_path / "teacher18.safetensors"
    if not path.is_file():
        save_segmentor(build_segmentor("deeplabv3", "resnet18", 11, aux=True, head_width=128), path)
    return path


@pytest.mark.slow
def test_teacher_under_inference_mode_gives_the_same_weights(tmp_path, teacher):
    from conftest import TINY as SGD_TINY

    small_queues = ["method.cirkd.pixel_queue=50", "method.cirkd.region_queue=10", "method.cirkd.pixel_contrasts=64",
                    "method.cirkd.region_contrasts=16"]
    for recipe, extra in (("demo/kd", []), ("demo/cirkd", small_queues)):
        out = []
        for mode in ("false", "true"):
            cfg = load_recipe(recipe, SGD_TINY + [f"output_dir={tmp_path / mode}", f"teacher.checkpoint={teacher}",
                                                  f"train.teacher_inference_mode={mode}", *extra])
            train(cfg, show_progress=False)
            _reset()
            out.append(load_file(str(tmp_path / mode / recipe / "seed0/final.safetensors")))
        assert all(torch.equal(out[0][k], out[1][k]) for k in out[0]), recipe


def test_the_divergence_message_promises_only_a_checkpoint_that_exists(tmp_path):
    from accelerate import Accelerator

    from afdcd_bench.engine.stepping import check_finite

    loss = torch.tensor(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"no checkpoint was saved before it \(the run starts over when rerun\)"):
        check_finite(Accelerator(cpu=True), loss, {"task": loss}, "demo/kd", 1, tmp_path)
    (tmp_path / "state").mkdir()
    with pytest.raises(TrainingDiverged, match=rf"the last good checkpoint in {tmp_path / 'state'} is intact"):
        check_finite(Accelerator(cpu=True), loss, {"task": loss}, "demo/kd", 3, tmp_path)
    _reset()


def test_the_record_says_when_the_loss_rose_instead_of_falling():
    from afdcd_bench.engine.loop import loss_trend, note_loss_trend

    progress = {"first_terms": {"steps": 2, "sums": {"task": 4.0, "kd": 2.0}}, "first_micro": 2}
    assert loss_trend(progress) is None  # no step ended yet
    for total in (3.0, 3.0, 100.0):
        note_loss_trend(progress, total)
    assert progress["loss_ema"] == pytest.approx(0.9 * 3.0 + 0.1 * 100.0)
    assert loss_trend(progress) == {"first": 3.0, "last": pytest.approx(12.7)}  # (4 + 2) / 2 micro-batches


def test_a_run_whose_loss_rose_says_so(tmp_path, capsys, monkeypatch):
    import afdcd_bench.engine.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "loss_trend", lambda progress: {"first": 1.0, "last": 134.0})
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.iterations=1"])
    rec = train(cfg, show_progress=False)
    _reset()
    assert rec["loss_trend"] == {"first": 1.0, "last": 134.0}
    out = capsys.readouterr()
    assert "loss ended at 134.000, above twice its first steps' mean (1.000): it did not train" in out.out + out.err


def test_a_run_keeps_its_log_in_its_folder_without_a_terminal(tmp_path):
    cfg = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path}", "train.log_interval=1"])
    train(cfg, show_progress=False)
    _reset()
    log = (tmp_path / "demo/baseline/seed0/logs/train.log").read_text()
    assert "step 1/" in log and " task " in log and "val mIoU" in log


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_state_and_says_so(tmp_path, monkeypatch):
    import errno

    from accelerate import Accelerator

    from afdcd_bench.engine.checkpointing import MARKER, DiskFull, save_training_state

    acc = Accelerator(cpu=True)
    acc.prepare(torch.nn.Linear(2, 2))
    save_training_state(acc, tmp_path, {"step": 1})
    assert (tmp_path / "state" / MARKER).is_file()

    def full(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"\0" * 1000)  # what got written before the disk filled up
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file: unexpected pos 64")

    monkeypatch.setattr(acc, "save_state", full)
    with pytest.raises(DiskFull, match=r"disk full at .*: the training state needs about \d+ MB, \d+ MB are free; the partial "
                                       r".*state.tmp was removed and the previous state .*state is kept"):
        save_training_state(acc, tmp_path, {"step": 2})
    assert not (tmp_path / "state.tmp").exists() and (tmp_path / "state" / MARKER).is_file()
    assert json.loads((tmp_path / "state" / "progress.json").read_text())["step"] == 1

    def other(path):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(acc, "save_state", other)
    with pytest.raises(PermissionError):
        save_training_state(acc, tmp_path, {"step": 3})  # not a full disk: raised as it is
    _reset()
