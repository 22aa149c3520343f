"""Multi-process training on CPU: the same result as one process.

Two-process runs go through tests/distributed_helpers.py (accelerate.debug_launcher, forked gloo
processes, in a fresh interpreter) and one through the real `accelerate launch`. Dropout is
replaced by Identity in these runs: its random draws differ between one and two processes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn
from safetensors.torch import load_file

from afdcd_bench.engine.building import build_student
from afdcd_bench.config import load_recipe
from afdcd_bench.engine import TrainHooks, train
from distributed_helpers import strip

ROOT = Path(__file__).resolve().parents[1]
# digits without augmentation has no ignore pixels, so every process's mean CE weighs alike
TINY = ["data.crop_size=[32, 32]", "train.optimizer=sgd", "train.lr=0.01", "train.iterations=3", "train.effective_batch=8",
        "train.val_interval=3", "train.checkpoint_interval=3", "student.backbone=resnet10t", "eval.batch_size=30",
        "student.pretrained=false"]


def _reset():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _without(kinds):
    return TrainHooks(adapt_student=lambda student: strip(student, kinds))


def _run(cfg, **kw):
    train(cfg, show_progress=False, **kw)
    _reset()


def _final(out, recipe="demo/baseline"):
    return load_file(str(Path(out) / recipe / "seed0/final.safetensors"))


def _final_untrained(kinds=(nn.Dropout, nn.Dropout2d)):
    from accelerate.utils import set_seed

    cfg = load_recipe("demo/baseline", TINY)
    set_seed(cfg.train.seed)  # as train() does before building the student
    return strip(build_student(cfg, 11), kinds).state_dict()


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _param_diff(a, b):
    """How far the trained parameters moved: BatchNorm's running statistics move in eval-free forward
    passes even at lr 1e-12, so they say nothing about whether the weights trained."""
    return _max_diff(*({k: v for k, v in d.items() if not k.endswith(BN_BUFFERS)} for d in (a, b)))


def _two_processes(overrides, *flags, results_dir=None, recipe="demo/baseline"):
    cmd = [sys.executable, str(ROOT / "tests/distributed_helpers.py"), recipe, *overrides, *flags]
    if results_dir:
        cmd += ["--results-dir", str(results_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    one = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'one'}"])
    _run(one, results_dir=tmp_path / "res1", hooks=_without((nn.Dropout, nn.Dropout2d)))
    _two_processes(TINY + [f"output_dir={tmp_path / 'two'}"], "--sync-bn", results_dir=tmp_path / "res2")
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    from accelerate.utils import set_seed

    set_seed(one.train.seed)
    init = strip(build_student(one, 11), (nn.Dropout, nn.Dropout2d)).state_dict()
    assert _param_diff(a, init) > 1e-3  # it trained (lr 1e-12 moves the parameters 2e-13)
    assert _max_diff(a, b) < 1e-5
    r1 = json.loads((tmp_path / "res1/demo__baseline__seed0.json").read_text())
    r2 = json.loads((tmp_path / "res2/demo__baseline__seed0.json").read_text())
    assert (r1["num_processes"], r2["num_processes"], r2["per_device_batch"]) == (1, 2, 4)
    # 200 val images in batches of 30 split unevenly over 2 processes: none may count twice
    assert r2["final_miou"] == pytest.approx(r1["final_miou"], abs=1e-4)


@pytest.mark.slow
def test_a_stop_signal_to_one_process_stops_both_at_the_same_step_and_the_rerun_equals_an_unstopped_run(tmp_path):
    """SLURM may signal the processes of a run at slightly different moments (or one only): the
    flag is combined over processes each step, so both save the same step, and the state resumes."""
    longer = [*TINY, "train.iterations=4", "train.checkpoint_interval=4"]
    _two_processes([*longer, f"output_dir={tmp_path / 'straight'}"])
    out = _two_processes([*longer, f"output_dir={tmp_path / 'stopped'}"], "--signal-rank1-at", "1")
    assert out.count("stopped by SIGUSR1 at step 2, its state saved") == 1  # rank 1, which got it
    assert out.count("stopped by another process's signal at step 2, its state saved") == 1  # rank 0
    from afdcd_bench.engine.checkpointing import latest_state

    run = tmp_path / "stopped/demo/baseline/seed0"
    assert json.loads((latest_state(run) / "progress.json").read_text())["step"] == 2
    _two_processes([*longer, f"output_dir={tmp_path / 'stopped'}"], results_dir=tmp_path / "res")
    rec = json.loads((tmp_path / "res/demo__baseline__seed0.json").read_text())
    assert rec["resumed_from_step"] == 2 and rec["launch"]["processes"] == 2
    assert _max_diff(_final(tmp_path / "straight"), _final(tmp_path / "stopped")) == 0


def test_the_sync_bn_of_two_processes_with_different_inputs_is_batchnorm_over_their_union():
    # the stand-in every 2-process equivalence test relies on (torch's SyncBatchNorm has no CPU kernel)
    _two_processes([], "--check-sync-bn")


def test_evaluation_and_saving_use_rank_0_bn_statistics():
    # without SyncBatchNorm each rank's running statistics differ; the scored model is the saved one
    _two_processes([], "--check-buffers")


def test_gradient_accumulation_equals_the_large_batch_without_bn(tmp_path):
    hooks = _without((nn.Dropout, nn.Dropout2d, nn.BatchNorm2d))
    big = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'big'}"])
    _run(big, hooks=hooks)
    acc = load_recipe("demo/baseline", TINY + [f"output_dir={tmp_path / 'acc'}"])
    _run(acc, per_device_batch=2, results_dir=tmp_path / "res", hooks=hooks)
    assert json.loads((tmp_path / "res/demo__baseline__seed0.json").read_text())["grad_accumulation"] == 4
    assert _max_diff(_final(tmp_path / "big"), _final(tmp_path / "acc")) < 1e-6


def _launch(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU")}
    env.update(env_extra)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args, "-m", "afdcd_bench", "train", "demo/baseline",
           *TINY, f"output_dir={tmp_path / 'runs'}", "--results-dir", str(tmp_path / "res")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.slow
def test_real_accelerate_launch_trains_on_two_cpu_processes(tmp_path):
    res = _launch(["--config_file", str(ROOT / "recipes/accelerate/cpu2.yaml")], {"ACCELERATE_USE_CPU": "1"}, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("final mIoU") == 1  # printed by rank 0 only
    rec = json.loads((tmp_path / "res/demo__baseline__seed0.json").read_text())
    assert rec["num_processes"] == 2 and rec["per_device_batch"] == 4 and rec["distributed_type"] == "MULTI_CPU"


@pytest.mark.slow
def test_real_accelerate_launch_with_the_shipped_zero2_config_equals_ddp(tmp_path, deepspeed_available):
    ddp = _launch(["--config_file", str(ROOT / "recipes/accelerate/cpu2.yaml")], {"ACCELERATE_USE_CPU": "1"}, tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # the 8-GPU bf16 file, with the process count and precision a CPU box can run
    zero = _launch(["--config_file", str(ROOT / "recipes/accelerate/zero2.yaml"), "--num_processes", "2", "--mixed_precision", "no"],
                   {}, tmp_path / "zero")
    assert zero.returncode == 0, zero.stderr[-3000:]
    rec = json.loads((tmp_path / "zero/res/demo__baseline__seed0.json").read_text())
    assert (rec["num_processes"], rec["distributed_type"], rec["global_grad_clip"]) == (2, "DEEPSPEED", 0.0)
    # same seed on both ranks in both runs: even dropout draws agree, so the weights do
    assert _max_diff(_final(tmp_path / "ddp/runs"), _final(tmp_path / "zero/runs")) == 0.0


def test_unsynchronised_launch_is_refused(tmp_path):
    # --multi_gpu without ACCELERATE_USE_CPU on a CPU box: two processes that each think they are alone
    res = _launch(["--multi_gpu", "--num_processes", "2"], {}, tmp_path)
    assert res.returncode != 0
    assert "WORLD_SIZE=2" in res.stderr and "unsynchronised" in res.stderr
    assert not (tmp_path / "res").exists()


@pytest.fixture(scope="module")
def deepspeed_available():
    pytest.importorskip("deepspeed")  # in the [dev] extra that CI installs


@pytest.mark.slow
def test_deepspeed_zero_stages_equal_ddp_with_batchnorm(tmp_path, deepspeed_available):
    # BN kept (not synchronised in either): DeepSpeed's default global clip at 1.0 used to make
    # ZeRO-1/2 drift from DDP by 3e-3 a step; the trainer now turns it off as the paper has none.
    _two_processes(TINY + [f"output_dir={tmp_path / 'ddp'}"], results_dir=tmp_path / "res_ddp")
    ddp = _final(tmp_path / "ddp")
    assert _param_diff(ddp, _final_untrained()) > 1e-3  # it trained
    miou = json.loads((tmp_path / "res_ddp/demo__baseline__seed0.json").read_text())["final_miou"]
    for stage, tol in ((1, 0.0), (2, 0.0), (3, 1e-6)):  # ZeRO-3 reduce-scatters: rounding only
        out = tmp_path / f"zero{stage}"
        run = TINY + [f"output_dir={out}"]
        if stage == 3:  # killed after step 2's checkpoint, then resumed from the partitioned state
            run += ["train.checkpoint_interval=1"]
            with pytest.raises(AssertionError):
                _two_processes(run, "--zero", "3", "--stop-after-saves", "2")
            assert json.loads((out / "demo/baseline/seed0/state/progress.json").read_text())["step"] == 2
        _two_processes(run, "--zero", str(stage), results_dir=out / "res")
        rec = json.loads((out / "res/demo__baseline__seed0.json").read_text())
        assert (rec["num_processes"], rec["distributed_type"], rec["global_grad_clip"]) == (2, "DEEPSPEED", 0.0)
        assert rec["resumed_from_step"] == (2 if stage == 3 else None)
        assert _max_diff(ddp, _final(out)) <= tol, stage
        # ZeRO-3 evaluates a gathered copy: uneven val shards neither hang nor count twice
        assert rec["final_miou"] == pytest.approx(miou, abs=1e-6)


@pytest.mark.slow
def test_deepspeed_accumulation_equals_ddp_accumulation(tmp_path, deepspeed_available):
    # 2 processes x 2 micro-batches of 2: DeepSpeed accumulates in its own buffers, so rounding differs
    _two_processes(TINY + [f"output_dir={tmp_path / 'ddp'}"], "--per-device-batch", "2")
    _two_processes(TINY + [f"output_dir={tmp_path / 'zero'}"], "--per-device-batch", "2", "--zero", "2", results_dir=tmp_path / "res")
    rec = json.loads((tmp_path / "res/demo__baseline__seed0.json").read_text())
    assert (rec["per_device_batch"], rec["grad_accumulation"]) == (2, 2)
    assert _max_diff(_final(tmp_path / "ddp"), _final(tmp_path / "zero")) < 1e-4


@pytest.mark.slow
def test_deepspeed_clips_the_projector_as_ddp_does(tmp_path, deepspeed_available):
    teacher = load_recipe("demo/teacher", TINY + [f"output_dir={tmp_path}", "student.backbone=resnet10t", "train.iterations=1"])
    _run(teacher)
    ckpt = tmp_path / "demo/teacher/seed0/final.safetensors"
    # a clip far below the projector's gradient norm, so that clipping acts on every step, and
    # feature terms heavy enough that the projector's updates show in the student by step 3
    common = TINY + [f"teacher.checkpoint={ckpt}", "teacher.backbone=resnet10t", "method.afdcd.lambda_fd=0.01", "method.afdcd.lambda_ctr=0.1"]
    afdcd = common + ["method.clip_grad_norm=0.001"]
    _two_processes(afdcd + [f"output_dir={tmp_path / 'ddp'}"], recipe="demo/afdcd")
    _two_processes(afdcd + [f"output_dir={tmp_path / 'zero'}"], "--zero", "2", recipe="demo/afdcd")
    _two_processes(common + [f"output_dir={tmp_path / 'noclip'}"],
                   "--zero", "2", recipe="demo/afdcd")
    ddp, zero, noclip = (_final(tmp_path / d, "demo/afdcd") for d in ("ddp", "zero", "noclip"))
    assert _max_diff(ddp, zero) < 1e-6
    assert _max_diff(zero, noclip) > 1e-4  # the clip changed the training


@pytest.mark.parametrize("path", sorted((ROOT / "recipes/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_launch_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.mixed_precision in ("no", "bf16")
    if cfg.distributed_type.value == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] in (1, 2, 3) and cfg.deepspeed_config["gradient_clipping"] == 0.0


@pytest.mark.parametrize("given, applied", [(None, 0.0), ("0.0", 0.0), ("2.5", 2.5)])
def test_deepspeed_global_clip_is_off_unless_set(monkeypatch, deepspeed_available, given, applied):
    """What the run gets, whatever form Accelerate gives the launch's value in (it changed between
    releases: 1.15 left "auto" for ACCELERATE_GRADIENT_CLIPPING=0.0, 1.16 reads it as 0.0)."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from afdcd_bench.engine.stepping import disable_global_clip

    if given is None:
        monkeypatch.delenv("ACCELERATE_GRADIENT_CLIPPING", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", given)
    plugin = DeepSpeedPlugin(zero_stage=2)
    acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))
    assert disable_global_clip(acc) == applied
    assert float(plugin.deepspeed_config["gradient_clipping"]) == applied


@pytest.mark.parametrize("stored, applied", [("missing", 0.0), ("auto", 0.0), (None, 0.0), (0, 0.0), ("0.0", 0.0),
                                             (-1.0, 0.0), (2.5, 2.5), ("2.5", 2.5)])
def test_global_clip_from_every_form_a_deepspeed_config_holds(stored, applied):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from afdcd_bench.engine.stepping import disable_global_clip

    config = {} if stored == "missing" else {"gradient_clipping": stored}
    acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                          state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))
    assert disable_global_clip(acc) == applied
    assert float(config["gradient_clipping"]) == applied


def test_deepspeed_fp16_with_a_projector_clip_is_refused(deepspeed_available):
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedType

    from afdcd_bench.engine.stepping import check_deepspeed_clip

    params = [nn.Parameter(torch.zeros(2))]
    acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision="fp16")
    with pytest.raises(ValueError, match="loss-scaled"):
        check_deepspeed_clip(acc, params, 15.0)
    check_deepspeed_clip(acc, params, 0.0)  # no clip: fine
    check_deepspeed_clip(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision="bf16"), params, 15.0)
    check_deepspeed_clip(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, mixed_precision="fp16"), params, 15.0)


def test_a_method_with_its_own_optimizer_is_refused_under_deepspeed():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from afdcd_bench.engine.stepping import check_own_parts

    with pytest.raises(ValueError, match=r"'skd\+kd\+adv' trains adv.discriminator with its own optimizer.*without a DeepSpeed"):
        check_own_parts(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), "skd+kd+adv", ["adv.discriminator"])
    check_own_parts(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), "skd+kd+adv", ["adv.discriminator"])
    check_own_parts(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), "cwd+kd", [])
