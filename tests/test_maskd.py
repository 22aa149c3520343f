"""MasKD: its losses against formulas written out here, the two stages chained on digits through
reproduce (stage 1 once, before the students; skipped when its record exists), a stopped stage
resuming exactly, and the stage-1 teacher mode."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from afdcd_bench.config import load_recipe
from afdcd_bench.engine import TrainHooks, train
from afdcd_bench.engine.identity import file_sha256
from afdcd_bench.engine.stage import save_stage_weights
from afdcd_bench.losses.maskd import maskd_loss, masked_logits, token_dice, token_masks
from conftest import TINY, reset_accelerate

D64 = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_token_masks_masked_logits_dice_and_the_masked_mimicking_loss():
    z, w = _rand(2, 3, 2, 2, seed=1), _rand(4, 3, seed=2)
    masks = token_masks(z, w)
    for b in range(2):
        for t in range(4):
            for i in range(2):
                for j in range(2):
                    expect = _sigmoid(sum(w[t, k].item() * z[b, k, i, j].item() for k in range(3)))
                    assert masks[b, t, i, j].item() == pytest.approx(expect, rel=1e-12)
    total_mask = masks.sum(1)
    assert torch.allclose(masked_logits(z, masks), z * total_mask[:, None])
    # Dice: mean over images and ordered pairs of different tokens
    dice = 0.0
    for b in range(2):
        m = [masks[b, t].flatten().tolist() for t in range(4)]
        for t in range(4):
            for u in range(4):
                if t != u:
                    dot = sum(x * y for x, y in zip(m[t], m[u]))
                    dice += 2 * dot / (sum(x * x for x in m[t]) + 1e-12 + sum(y * y for y in m[u]) + 1e-12)
    assert token_dice(masks).item() == pytest.approx(dice / (2 * 12), rel=1e-12)
    # stage 2: 0.5 * mean over images, tokens, classes of sum_x m^2 (zs - zt)^2 / (sum_x m + 1e-5)
    zs = _rand(2, 3, 2, 2, seed=3)
    loss = 0.0
    for b in range(2):
        for t in range(4):
            m = masks[b, t].flatten().tolist()
            for k in range(3):
                d = (zs[b, k] - z[b, k]).flatten().tolist()
                loss += sum(mx * mx * dx * dx for mx, dx in zip(m, d)) / (sum(m) + 1e-5)
    assert maskd_loss(zs, z, masks).item() == pytest.approx(0.5 * loss / 24, rel=1e-12)
    assert maskd_loss(z, z, masks).item() == 0.0
    zs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: maskd_loss(x, z, masks), (zs,))
    with pytest.raises(ValueError, match="tokens of 3 classes for logits of 2"):
        token_masks(z[:, :2], w)


@pytest.mark.slow
def test_reproduce_runs_the_token_stage_once_before_the_students_and_chains_them(tmp_path):
    from rich.console import Console

    from afdcd_bench.engine.records import read_record
    from afdcd_bench.harness.reproduce import reproduce
    from afdcd_bench.harness.table import records_frame

    out, runs = tmp_path / "res", tmp_path / "runs"
    small = ["train.iterations=2", "train.val_interval=2", "train.checkpoint_interval=2", "data.crop_size=[32, 32]",
             "student.pretrained=false"]
    console = Console(record=True, width=200)
    reproduce("demo", seeds=2, methods=["maskd"], results_dir=str(out), output_dir=str(runs), extra=small, console=console)
    names = sorted(p.name for p in out.glob("*__seed*.json"))
    assert names == ["demo__baseline__seed0.json", "demo__baseline__seed1.json", "demo__maskd__seed0.json",
                     "demo__maskd__seed1.json", "demo__maskd_tokens__seed0.json", "demo__teacher__seed0.json"]
    stage = read_record(out / "demo__maskd_tokens__seed0.json")
    assert stage["stage_of"] == "maskd" and stage["teacher_mode"] == "eval" and stage["final_terms"]["tokens_ce"] > 0
    tokens = load_file(str(runs / "demo/maskd_tokens/seed0/stage.safetensors"))["tokens"]
    assert tokens.shape == (8, 11)
    student = read_record(out / "demo__maskd__seed1.json")
    assert student["config"]["method"]["maskd"]["stage_weights"] == str(runs / "demo/maskd_tokens/seed0/stage.safetensors")
    assert student["method_state_bytes"] == {"maskd": 8 * 11 * 4} and student["final_miou"] is not None
    log = console.export_text()
    assert log.index("demo/maskd_tokens (seed 0)") < log.index("demo/baseline (seed 0)") < log.index("demo/maskd (seed 0)")
    frame = records_frame(out)
    assert set(frame["method"]) == {"teacher", "baseline", "maskd"}  # the stage is not a table row
    again = Console(record=True, width=200)
    reproduce("demo", seeds=2, methods=["maskd"], results_dir=str(out), output_dir=str(runs), extra=small, console=again)
    text = again.export_text()
    assert "skip demo/maskd_tokens seed 0" in text
    assert "6 run(s) in this table were not trained by this command: their records were already in" in text
    # other tokens at the same path, not the ones the stage's record holds: reproduce owns the stage, so it makes
    # it again, and the students that read it (their old records moved aside, never passed off as the new ones')
    stage_file = runs / "demo/maskd_tokens/seed0/stage.safetensors"
    save_file({"tokens": tokens + 1}, str(stage_file))
    third = Console(record=True, width=200)
    reproduce("demo", seeds=1, methods=["maskd"], results_dir=str(out), output_dir=str(runs), extra=small, console=third)
    said = " ".join(third.export_text().split())
    assert "demo/maskd_tokens seed 0 is trained again: what it wrote changed since its record" in said
    assert "demo/maskd seed 0 is trained again: it reads demo/maskd_tokens@seed0" in said
    remade = file_sha256(stage_file)
    assert read_record(out / "demo__maskd_tokens__seed0.json")["stage_weights_sha256"] == remade
    assert read_record(out / "demo__maskd__seed0.json")["inputs"]["method.maskd.stage_weights"] == remade
    assert list(out.glob("demo__maskd__seed0.json.replaced-*")) and "skip demo/baseline seed 0" in said


def _tokens(tmp_path, teacher, label, extra, hooks=None):
    cfg = load_recipe("demo/maskd_tokens", [*TINY, f"teacher.checkpoint={teacher}", "train.iterations=3", "train.lr=1.0",
                                             f"output_dir={tmp_path / label}", *extra])
    train(cfg, show_progress=False, hooks=hooks)
    reset_accelerate()
    return load_file(str(tmp_path / label / "demo/maskd_tokens/seed0/stage.safetensors"))["tokens"]


def test_token_stage_resumes_exactly_and_its_teacher_mode_decides_batch_dependence(tmp_path, teacher):
    straight = _tokens(tmp_path, teacher, "straight", [])

    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tokens(tmp_path, teacher, "resumed", [], TrainHooks(after_checkpoint=stop))
    reset_accelerate()
    assert torch.equal(_tokens(tmp_path, teacher, "resumed", []), straight)
    # the students name the stage's file by its hash: equal tokens must make the same bytes
    stage_file = "demo/maskd_tokens/seed0/stage.safetensors"
    assert file_sha256(tmp_path / "resumed" / stage_file) == file_sha256(tmp_path / "straight" / stage_file)
    # eval (default): the teacher's logits do not depend on the batch they are in, so 2 micro-batches
    # of 2 learn what one batch of 4 learns; train (the release): BN statistics of each micro-batch do
    from afdcd_bench.engine import trainer

    def split(label, mode):
        cfg = load_recipe("demo/maskd_tokens", [*TINY, f"teacher.checkpoint={teacher}", "train.iterations=3", "train.lr=1.0",
                                                f"output_dir={tmp_path / label}", f"method.maskd_tokens.teacher_mode={mode}"])
        trainer.train(cfg, per_device_batch=2, show_progress=False)
        reset_accelerate()
        return load_file(str(tmp_path / label / "demo/maskd_tokens/seed0/stage.safetensors"))["tokens"]

    init = torch.randn(8, 11, generator=torch.Generator().manual_seed(0)) * 0.01  # the recipe's N(0, 0.01^2), seed 0
    moved = (straight - init).abs().max()
    assert moved > 1e-4
    assert (split("eval-split", "eval") - straight).abs().max() < 1e-4 * moved
    whole = _tokens(tmp_path, teacher, "train-whole", ["method.maskd_tokens.teacher_mode=train"])
    assert (split("train-split", "train") - whole).abs().max() > 0.1 * moved


def test_stage_weights_are_the_same_bytes_at_every_save(tmp_path):
    # safetensors orders a metadata dict of several keys differently from one save to the next
    weights = {"tokens": torch.arange(6.0).reshape(2, 3)}
    facts = {"method": "maskd_tokens", "recipe": "demo/maskd_tokens", "step": 8}
    hashes = {file_sha256(save_stage_weights(weights, tmp_path / f"{i}.safetensors", facts)) for i in range(6)}
    assert len(hashes) == 1
    assert torch.equal(load_file(str(tmp_path / "0.safetensors"))["tokens"], weights["tokens"])


def test_stage_two_without_its_tokens_names_the_stage_recipe_and_refuses_other_class_counts(tmp_path):
    from safetensors.torch import save_file

    from afdcd_bench.methods import BuildContext, build_method

    ctx = BuildContext({"logits": 11, "aux_logits": 11}, {"logits": 11, "aux_logits": 11}, 11)
    cfg = load_recipe("demo/maskd", [f"output_dir={tmp_path}"])
    assert cfg.method.maskd.stage_weights == str(tmp_path / "demo/maskd_tokens/seed0/stage.safetensors")
    with pytest.raises(FileNotFoundError, match="run the recipe demo/maskd_tokens first"):
        build_method(cfg.method, ctx)
    save_file({"tokens": torch.zeros(8, 19)}, str(tmp_path / "t.safetensors"))
    cfg = load_recipe("demo/maskd", [f"method.maskd.stage_weights={tmp_path / 't.safetensors'}"])
    with pytest.raises(ValueError, match="learnt for 19 classes, this recipe has 11"):
        build_method(cfg.method, ctx)
    with pytest.raises(Exception, match="maskd_tokens is a stage trained on the teacher alone"):
        load_recipe("demo/maskd_tokens", ["method.name=maskd_tokens+kd"])
