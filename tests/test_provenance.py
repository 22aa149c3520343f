"""Every file a run reads is the one its producer recorded: a teacher checkpoint, a saved state, a
--teacher, and in `reproduce` the teacher it trained itself (redone, with what reads it)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from afdcd_bench.config import load_recipe
from afdcd_bench.engine import TrainHooks, train
from afdcd_bench.engine.provenance import CheckpointMismatch
from afdcd_bench.models.weights import sha256_file
from conftest import TINY, reset_accelerate


def _damage(path, where=0.6):
    """Overwrite bytes inside the tensor data (the header stays valid: the file still loads)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    data[at:at + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _teacher_run(teacher, tmp_path):
    """A copy of the session's teacher run folder whose record names the copy's files."""
    src = teacher.parent
    dst = tmp_path / "teacher-run"
    shutil.copytree(src, dst)
    record = json.loads((dst / "record.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(dst / "final.safetensors")
    record["checkpoint"] = str(dst / "final.safetensors")
    record["best_checkpoint"] = str(dst / "best.safetensors")
    (dst / "record.json").write_text(json.dumps(record))
    return dst


def test_a_teacher_changed_since_its_record_is_refused_naming_both_hashes(teacher, tmp_path):
    run = _teacher_run(teacher, tmp_path)
    ckpt = run / "final.safetensors"
    before = sha256_file(ckpt)
    _damage(ckpt)
    after = sha256_file(ckpt)
    cfg = load_recipe("demo/kd", [*TINY, f"teacher.checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(CheckpointMismatch, match=rf"teacher.checkpoint {ckpt} has sha256 {after}, but {run / 'record.json'} "
                                                 rf"recorded {before}"):
        train(cfg, show_progress=False)
    reset_accelerate()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors")), "nothing was trained"


def test_a_teacher_without_a_record_holding_nan_is_named_not_blamed_on_the_lr(teacher, tmp_path):
    ckpt = tmp_path / "given.safetensors"
    shutil.copy(teacher.with_suffix(".json"), ckpt.with_suffix(".json"))  # the network's description beside it
    state = load_file(str(teacher))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(ckpt))
    cfg = load_recipe("demo/kd", [*TINY, f"teacher.checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(CheckpointMismatch, match=rf"teacher checkpoint {ckpt} holds non-finite values in 1 tensor\(s\) \({name}\)"):
        train(cfg, show_progress=False)
    reset_accelerate()


def test_a_saved_state_changed_after_it_was_saved_is_not_resumed(tmp_path):
    cfg = load_recipe("demo/baseline", [*TINY, "train.iterations=2", f"output_dir={tmp_path}"])

    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False, hooks=TrainHooks(after_checkpoint=stop))
    reset_accelerate()
    state = tmp_path / "demo/baseline/seed0/state"
    listed = json.loads((state / "sha256.json").read_text())
    weights = next(state / n for n in listed if n.endswith(".safetensors"))
    _damage(weights)
    with pytest.raises(CheckpointMismatch, match=rf"the saved training state {weights} is sha256 [0-9a-f]{{64}}, but "
                                                 rf"{state / 'sha256.json'} recorded {listed[weights.name]}.*--no-resume"):
        train(cfg, show_progress=False)
    reset_accelerate()
    rec = train(cfg, show_progress=False, resume=False)  # starting over works, the damaged folder kept aside
    reset_accelerate()
    assert rec["resumed_from_step"] is None and list(tmp_path.glob("demo/baseline/seed0.replaced-*"))


def test_a_damaged_given_teacher_is_refused_before_anything_runs(teacher, tmp_path):
    from afdcd_bench.harness.reproduce import ReproduceError, check_teacher

    run = _teacher_run(teacher, tmp_path)
    _damage(run / "best.safetensors")
    with pytest.raises(ReproduceError, match=r"--teacher .*best.safetensors has sha256 .* but .*record.json recorded"):
        check_teacher(str(run / "best.safetensors"), {"demo/kd": list(TINY)})
    (run / "record.json").unlink()  # no record: a truncated file is still named, not a traceback
    data = (run / "best.safetensors").read_bytes()
    (run / "best.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReproduceError, match=r"--teacher .*: .*best.safetensors is not a readable safetensors file \(truncated or damaged"):
        check_teacher(str(run / "best.safetensors"), {"demo/kd": list(TINY)})


@pytest.mark.slow
def test_reproduce_trains_a_damaged_teacher_again_and_what_read_it(tmp_path):
    from scale_helpers import records, reproduce

    reproduce(tmp_path, "a", "--executor", "inprocess", "--methods", "kd")
    res, runs = tmp_path / "a/res", tmp_path / "a/runs"
    first = records(res)
    best = runs / "demo/teacher/seed0/best.safetensors"
    _damage(best)
    damaged = sha256_file(best)
    out = reproduce(tmp_path, "a", "--executor", "inprocess", "--methods", "kd")
    log = out.stdout + out.stderr
    assert "demo/teacher seed 0 is trained again: what it wrote changed since its record" in " ".join(log.split()), log[-3000:]
    assert "demo/kd seed 0 is trained again: it reads" in " ".join(log.split())
    again = records(res)
    teacher = again["demo__teacher__seed0.json"]
    assert teacher["best_checkpoint_sha256"] == sha256_file(best) != damaged
    kd = again["demo__kd__seed0.json"]
    assert kd["inputs"]["teacher.checkpoint"] == sha256_file(best)  # trained from the remade teacher, not the damaged file
    assert again["demo__baseline__seed0.json"]["digest"] == first["demo__baseline__seed0.json"]["digest"]  # reads no teacher: kept
    assert list(res.glob("demo__teacher__seed0.json.replaced-*")) and list(runs.glob("demo/teacher/seed0.replaced-*"))
