"""Every registered method's terms are weighted as its options say, and the record says what was
trained: one test over the registry. The losses themselves are checked against formulas in
test_losses / test_distillers / test_contrastive; this pins the glue between them and the printed
numbers (a term weighted by another term's option, a weight applied twice, a record listing a
weight that no trained term used)."""
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from afdcd_bench.config import load_recipe, recipes_root
from afdcd_bench.methods import METHODS, BuildContext, build_method, stage_of
from afdcd_bench.models import build_segmentor

from conftest import TINY

# each term's option must move it; one option per method at least, at non-zero values
EXTRA = {
    "adv": ["data.crop_size=[512, 512]"],  # the discriminator needs 64x64 logit maps
    "cirkd": ["method.cirkd.pixel_queue=50", "method.cirkd.region_queue=10", "method.cirkd.pixel_contrasts=64",
              "method.cirkd.region_contrasts=16"],
}


def _weight_options(cfg):
    """(dotted key, value) of every numeric weight option of the recipe's methods that is not zero."""
    out = []
    for component, options in cfg.method.options.items():
        for f in dataclasses.fields(options):
            v = getattr(options, f.name)
            if ("weight" in f.name or f.name.startswith("lambda")) and isinstance(v, (int, float)) and not isinstance(v, bool) and v:
                out.append((f"method.{component}.{f.name}", v))
    return out


def _outputs(cfg, seed=0):
    torch.manual_seed(seed)
    s = build_segmentor(cfg.student.arch, cfg.student.backbone, cfg.num_classes, False, cfg.student.aux, cfg.student.head_width)
    t = build_segmentor(cfg.teacher.arch, cfg.teacher.backbone, cfg.num_classes, False, True, None)
    images = torch.randn(2, 3, *cfg.data.crop_size)
    labels = torch.randint(0, cfg.num_classes, (2, *cfg.data.crop_size))
    labels[:, :3] = 255
    s.train()
    t.eval()
    with torch.no_grad():
        teacher_out = t(images)
    return s, t, s(images), teacher_out, labels


def _terms(name, overrides):
    cfg = load_recipe(*_recipe(name), [*TINY, *EXTRA.get(name, []), *overrides])
    student, teacher, s_out, t_out, labels = _outputs(cfg)
    ctx = BuildContext(student=student.output_channels, teacher=teacher.output_channels, num_classes=cfg.num_classes,
                       crop_size=tuple(cfg.data.crop_size), per_device_batch=2)
    torch.manual_seed(1)
    method = build_method(cfg.method, ctx)
    for part in method.own_parts().values():  # as the loop does
        part.optimizer = part.make_optimizer(list(part.module.parameters()))
    torch.manual_seed(2)  # the same random masks and samples in every build
    terms = {k: float(v.detach()) for k, v in method(s_out, t_out, labels).items()}
    terms.update(method.after_step())  # terms of parts with their own optimiser (the discriminator's)
    return cfg, terms, method.weights()


def _recipe(name):
    own = recipes_root() / "demo" / f"{name}.yaml"
    return (f"demo/{name}",) if own.is_file() else ("demo/kd",)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.safetensors"
    save_file({"tokens": torch.randn(8, 11, generator=torch.Generator().manual_seed(0))}, str(path))
    return path


@pytest.mark.parametrize("name", sorted(n for n in METHODS if n != "baseline"))
def test_each_term_moves_with_its_own_weight_only_and_the_weights_name_the_terms(name, tmp_path, tokens):
    extra = [f"teacher.checkpoint={tmp_path / 'unused.safetensors'}", "teacher.backbone=resnet10t"]  # networks built here
    if _recipe(name) == ("demo/kd",):
        extra.append(f"method.name={name}")
    if name == "maskd":
        extra.append(f"method.maskd.stage_weights={tokens}")
    if name in ("afdcd", "fd"):
        extra.append(f"method.{name}.mask=random")
    cfg, base, weights = _terms(name, extra)
    method_terms = {k: v for k, v in base.items() if k != "task"}
    assert method_terms, f"{name} returned no term"
    # every returned term has its weight in weights(), and every non-zero weight a returned term
    assert set(base) - {"task"} <= set(weights), (name, sorted(base), sorted(weights))
    assert {k for k, w in weights.items() if w and k not in ("task", "task_aux")} == set(method_terms), name
    assert all(v != 0 for v in method_terms.values()), (name, method_terms)
    options = _weight_options(cfg)
    assert options, f"{name} has no weight option"
    for key, value in options:
        _, scaled, scaled_weights = _terms(name, [*extra, f"{key}={value * 3}"])
        for term, v in method_terms.items():
            want = scaled_weights[term] / weights[term]
            assert scaled[term] / v == pytest.approx(want, rel=1e-5), f"{name}: {key} x3 moved {term} by {scaled[term] / v}, its weight by {want}"
        assert scaled["task"] == pytest.approx(base["task"], rel=1e-6)
    if stage_of(name) is None:
        assert "task" in base


def test_the_record_lists_the_terms_that_were_trained(tmp_path, teacher):
    from afdcd_bench.engine import train

    from conftest import reset_accelerate

    cfg = load_recipe("demo/afdcd", [*TINY, f"teacher.checkpoint={teacher}", f"output_dir={tmp_path}", "method.afdcd.lambda_kd=0",
                                     "method.afdcd.mask=center"])
    try:
        rec = train(cfg, show_progress=False)
    finally:
        reset_accelerate()
    # no KD term was computed at weight 0, so the record does not list one; the others with the weights used
    assert rec["method_terms"] == {"task": 1.0, "task_aux": 0.4, "fd": cfg.method.options["afdcd"].lambda_fd,
                                   "ctr": cfg.method.options["afdcd"].lambda_ctr}
    assert Path(rec["checkpoint"]).name == "final.safetensors"
    # each term against the task loss over the first steps (here every step: 2 of them)
    ratios = rec["term_ratios"]
    assert ratios["steps"] == 2 and set(ratios["ratios"]) == {"fd", "ctr"}
    assert all(0 < v < float("inf") for v in ratios["ratios"].values())


def test_term_ratios_sum_each_term_over_the_first_steps_only_and_divide_by_the_task_sum():
    from accelerate import Accelerator

    from afdcd_bench.engine.loop import RATIO_STEPS, note_first_terms, term_ratios

    from conftest import reset_accelerate

    try:
        accelerator = Accelerator(cpu=True)
        progress: dict = {}
        sums = {"task": 0.0, "fitnet": 0.0}
        for step in range(RATIO_STEPS + 5):
            for micro in range(2):  # accumulation: both micro-batches of a step count
                terms = {"task": torch.tensor(1.0 + step + micro), "fitnet": torch.tensor(0.5 * step + micro, requires_grad=True)}
                note_first_terms(progress, accelerator, terms, step, updated=micro == 1)
                if step < RATIO_STEPS:
                    sums = {k: sums[k] + float(v) for k, v in terms.items()}
        got = term_ratios(progress)
        assert got == {"steps": RATIO_STEPS, "ratios": {"fitnet": pytest.approx(sums["fitnet"] / sums["task"], rel=1e-6)}}
        stage: dict = {}  # a run without a task loss (a stage on the teacher alone) has none
        note_first_terms(stage, accelerator, {"tokens_ce": torch.tensor(1.0)}, 0, True)
        assert term_ratios(stage) is None and term_ratios({}) is None
    finally:
        reset_accelerate()
