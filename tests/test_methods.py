"""One test over every registered method: it builds from its recipe, trains 2 steps on digits,
resumes exactly after a stop, and, where the method reaches across processes or keeps state beyond
its weights (observed, not listed), 2 gloo processes give what 1 gives (the SyncBN stand-in of
tests/distributed_helpers.py, dropout removed: its draws differ between 1 and 2 processes).
Af-DCD's and FD's masks are the fixed centre mask here for the same reason."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from afdcd_bench.config import ConfigError, load_recipe, recipes_root
from afdcd_bench.engine import TrainHooks, train
from afdcd_bench.methods import METHODS, BuildContext, build_method, stage_of
from afdcd_bench.models import build_segmentor, load_segmentor
from conftest import TINY, reset_accelerate as _reset
from distributed_helpers import strip

ROOT = Path(__file__).resolve().parents[1]
PER_METHOD = {
    # The discriminator needs 64x64 logit maps. Adam's eps at 1: its normalisation would otherwise turn
    # float-rounding differences of near-zero gradients (summed in another order over 2 processes)
    # into steps of up to lr, and no tolerance could tell a wrong synchronisation from that; lr 0.5 keeps the steps large.
    # torch's spectral-norm estimate here: with the release's (no warm-up, the default) the 1- and 2-process
    # discriminators ended up to 2.6e-5 apart after two steps (measured; with torch's, kd+adv reached 3e-5 too),
    # float rounding of the gradient mean that the two estimates amplify alike; the synchronisation checked
    # here reads no estimate, and the release's steps are pinned in tests/test_distillers.py
    "adv": ["data.crop_size=[512, 512]", "train.effective_batch=2", "method.adv.eps=1.0", "method.adv.lr=0.5",
            "method.adv.spectral_norm=torch"],
    "afdcd": ["method.afdcd.mask=center"],
    "fd": ["method.fd.mask=center"],
    # at the demo's weights (100 and 3 at T=4) two steps at lr 0.01 move the weights so far that float
    # rounding alone differs by more than 1e-5 between 1 and 2 processes
    "cwd": ["method.cwd.feature_weight=1.0", "method.cwd.logit_weight=0.03"],
    # likewise IFVD at the demo's weight 20: on this machine 2 processes differed from 1 by 1e-4 after two
    # steps (no ignored pixels, so the per-process means are the global one); at weight 1 by 1.2e-7
    "ifvd": ["method.ifvd.weight=1.0"],
    # KT switches sides after the first of the two steps (round(0.75 x 2) = 2), so the run resumed at step 1
    # must find its step count in the checkpoint to tailor the teacher's side at step 2
    "kt": ["method.kt.switch_fraction=0.75"],
    # small queues: they are written to every checkpoint
    "cirkd": ["method.cirkd.pixel_queue=50", "method.cirkd.region_queue=10", "method.cirkd.pixel_contrasts=64",
              "method.cirkd.region_contrasts=16"],
    "cirkdv2": ["method.cirkdv2.pixel_queue=50", "method.cirkdv2.region_queue=10", "method.cirkdv2.pixel_contrasts=64",
                "method.cirkdv2.region_contrasts=16", "method.cirkdv2.channel_queue=40", "method.cirkdv2.channel_contrasts=16",
                "method.cirkdv2.channel_per_step=8", "method.cirkdv2.channel_pool=1"],
}
# |1 process - 2 processes| after two steps, largest over the weights and over the own parts, measured on an
# Intel Xeon with each kernel set torch, oneDNN and MKL can take (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA /
# MKL_ENABLE_INSTRUCTIONS at avx512, avx2 and default: the kernels of other CPU kinds; docs/dependencies.md):
#   adv: weights 8.1e-6 / 8.0e-6 / 1.4e-6, discriminator 5.6e-6 / 8.8e-6 / 8.8e-6 (over 1e-5 on an AMD EPYC)
#   every other method: at most 4.7e-7 (weights), 0 (own parts and queues)
# and with the discriminator's gradients left unsynchronised (the fault this guards against): 1.4e-2.
# So 1e-5 for every method (20x the noise) and 1e-4 for the adversarial term, whose Adam steps amplify the
# rounding of the gradient mean (11x its largest noise, 140x below the fault).
TOL_WEIGHTS = 1e-5
TOL_OWN: dict[str, float] = {"adv": 1e-4}
TOL_WEIGHTS_OF: dict[str, float] = {"adv": 1e-4}
KEEP = ["train.keep_state=true"]  # the finished runs' own parts and queues are compared below
NO_DROPOUT = TrainHooks(adapt_student=lambda s: strip(s, (nn.Dropout, nn.Dropout2d)))


def _runs(teacher, tokens):
    """(label, recipe, overrides) for every registered method and one composition; MasKD's stage 2
    with random tokens (tests/test_maskd.py chains it to stage 1)."""
    out = []
    for name in [*sorted(METHODS), "kd+fd"]:
        own = recipes_root() / "demo" / f"{name}.yaml"
        recipe = f"demo/{name}" if own.is_file() else "demo/kd"
        extra = [] if own.is_file() else [f"method.name={name}"]
        for part in name.split("+"):
            extra += PER_METHOD.get(part, [])
        if name == "maskd":
            extra.append(f"method.maskd.stage_weights={tokens}")
        out.append((name, recipe, [*TINY, f"teacher.checkpoint={teacher}", *KEEP, *extra]))
    released = ["method.cirkd.pixel_enqueue=released", "method.cirkd.enqueue=before_loss"]
    out.append(("cirkd-released", "demo/cirkd", [*TINY, f"teacher.checkpoint={teacher}", *KEEP, *PER_METHOD["cirkd"], *released]))
    return out


def _crosses_processes(cfg) -> bool:
    """Whether a run's method reaches across processes (a gather, a mean or a sum over them) or keeps
    state beyond its weights (own parts, run states), observed on one step built as for 2 processes.
    Those, a stage (its own loop) and KD (the teacher-side path of the student loop) are run again
    on 2 processes; the rest add nothing to what tests/test_distributed.py checks of the loop."""
    if stage_of(cfg.method.name):
        return True
    calls = []

    def spy(t):
        calls.append(t.shape)
        return t

    torch.manual_seed(0)
    s = cfg.student
    student = build_segmentor(s.arch, s.backbone, cfg.num_classes, False, s.aux, s.head_width).train()
    teacher = load_segmentor(cfg.teacher.checkpoint).eval()
    ctx = BuildContext(student=student.output_channels, teacher=teacher.output_channels, num_classes=cfg.num_classes,
                       crop_size=tuple(cfg.data.crop_size), num_processes=2, gather=spy, reduce_mean=spy, sum_across=spy,
                       per_device_batch=2)
    method = build_method(cfg.method, ctx)
    for part in method.own_parts().values():
        part.optimizer = part.make_optimizer(list(part.module.parameters()))
    images, labels = torch.randn(2, 3, *cfg.data.crop_size), torch.randint(0, cfg.num_classes, (2, *cfg.data.crop_size))
    with torch.no_grad():
        teacher_out = teacher(images)
    method(student(images), teacher_out, labels)
    method.after_step()
    return bool(calls or method.own_parts() or method.run_states())


def _state(run):
    """Final student weights (a stage's output) and the custom checkpoint objects (own parts, queues), if any."""
    weights = load_file(str(run / ("stage.safetensors" if (run / "stage.safetensors").is_file() else "final.safetensors")))
    own = {p.name: torch.load(p, weights_only=False) for p in sorted((run / "state").glob("custom_checkpoint_*.pkl"))}
    return weights, own


def _gap(a, b) -> float:
    """The largest absolute difference between two nests of tensors; inf where their structure, an
    integer tensor or a non-tensor value differs (those must be equal)."""
    if isinstance(a, dict):
        return max((_gap(a[k], b[k]) for k in a), default=0.0) if a.keys() == b.keys() else float("inf")
    if isinstance(a, (list, tuple)):
        return max((_gap(x, y) for x, y in zip(a, b)), default=0.0) if len(a) == len(b) else float("inf")
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else float("inf")
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return 0.0 if a == b else float("inf")


@pytest.fixture
def two_threads():
    """The 1-process runs on two threads, as with one pytest: under two pytest-xdist workers (one
    thread each) the adversarial discriminator's 1- and 2-process weights came out more than 1e-5
    apart (float summation order, which its Adam steps amplify; see PER_METHOD["adv"])."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_every_method_trains_resumes_exactly_and_two_processes_equal_one(tmp_path, teacher, two_threads):
    from safetensors.torch import save_file

    tokens = tmp_path / "tokens.safetensors"
    save_file({"tokens": torch.randn(8, 11, generator=torch.Generator().manual_seed(0))}, str(tokens))
    runs = _runs(teacher, tokens)
    assert {"baseline", "kd", "afdcd", "cwd", "dist", "ifvd", "skd", "adv", "fd", "cirkd", "maskd", "maskd_tokens"} <= {
        r[0] for r in runs}
    for label, recipe, extra in runs:
        straight = load_recipe(recipe, [*extra, f"output_dir={tmp_path / 'one' / label}"])
        rec = train(straight, results_dir=tmp_path / "res" / label, show_progress=False, hooks=NO_DROPOUT)
        _reset()
        assert set(label.split("-")[0].split("+")) <= set(rec["method"].split("+"))
        parts = rec["method"].split("+")
        stage = rec.get("stage_of") is not None  # learnt on the teacher alone: no task loss, no student
        assert set(rec["method_terms"]) >= {"task"} - ({"task"} if stage else set()) | {
            t for p in parts for t in METHODS[p].terms} - {"dist_aux", "maskd_aux"}
        assert (rec["final_miou"] is not None) != stage, label

        def stop(step):
            raise KeyboardInterrupt

        stopped = load_recipe(recipe, [*extra, f"output_dir={tmp_path / 'resumed' / label}"])
        with pytest.raises(KeyboardInterrupt):
            train(stopped, show_progress=False, hooks=TrainHooks(adapt_student=NO_DROPOUT.adapt_student, after_checkpoint=stop))
        _reset()
        again = train(stopped, show_progress=False, hooks=NO_DROPOUT)
        _reset()
        assert again["resumed_from_step"] == 1, label
        for key in ("history", "best_miou", "best_step", "final_miou", "final_iou", "best_iou", "method_terms", "loss_history",
                    "final_terms", "term_ratios"):  # what the table prints comes out of a resumed run as out of a straight one
            assert json.dumps(again.get(key)) == json.dumps(rec.get(key)), f"{label}: the resumed run's record differs in {key}"
        name = straight.name
        a, b = _state(tmp_path / "one" / label / name / "seed0"), _state(tmp_path / "resumed" / label / name / "seed0")
        assert _gap(a, b) == 0, f"{label}: the resumed run differs from the straight one"
        if label == "adv":
            assert rec["own_parts"]["adv.discriminator"] > 0 and a[1], "the discriminator's state is checkpointed"
        if label.startswith("cirkd-") or label == "cirkd":
            assert rec["method_state_bytes"]["cirkd"] == 11 * (50 + 10) * 128 * 4
            queues = [v["cirkd"] for v in a[1].values() if "cirkd" in v]
            assert len(queues) == 1 and queues[0]["pixel_ptr"] != [0] * 11, "the queues are checkpointed and filled"
        if label == "cirkdv2":  # the class queues and a channel queue of 40 entries over the 4x4 head positions
            assert rec["method_state_bytes"]["cirkdv2"] == (11 * (50 + 10) * 128 + 40 * 16) * 4
            states = [v["cirkdv2"] for v in a[1].values() if "cirkdv2" in v]
            assert len(states) == 1 and states[0]["channels"]["ptr"] == 16 and states[0]["classes"]["pixel_ptr"] != [0] * 11
        if label == "maskd":
            assert rec["method_state_bytes"]["maskd"] == 8 * 11 * 4 and rec["method_parameters"] == 0  # frozen tokens

    runs = [(label, recipe, extra) for label, recipe, extra in runs if label == "kd" or _crosses_processes(load_recipe(recipe, extra))]
    assert {label for label, _, _ in runs} == {"kd", "adv", "cirkd", "cirkd-released", "cirkdv2", "dist", "maskd_tokens"}
    many = json.dumps([[recipe, [*extra, f"output_dir={tmp_path / 'two' / label}"]] for label, recipe, extra in runs])
    cmd = [sys.executable, str(ROOT / "tests/distributed_helpers.py"), "demo/kd", "--sync-bn", "--many", many]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    gaps = {}
    for label, recipe, extra in runs:
        name = load_recipe(recipe, extra).name
        one, two = _state(tmp_path / "one" / label / name / "seed0"), _state(tmp_path / "two" / label / name / "seed0")
        gaps[label] = (_gap(one[0], two[0]), _gap(one[1], two[1]))
    print("largest |1 process - 2 processes|, weights and own parts:", json.dumps(gaps))
    for label, (weights, own) in gaps.items():
        assert weights <= TOL_WEIGHTS_OF.get(label, TOL_WEIGHTS), f"{label}: 2 processes differ from 1 by {weights:.3g} (all: {gaps})"
        assert own <= TOL_OWN.get(label, TOL_WEIGHTS), f"{label}: own parts differ between 2 processes and 1 by {own:.3g} (all: {gaps})"


@pytest.mark.parametrize("override,match", [
    ("method.cwd.tau=4", "method.cwd.tau"),
    ("method.cwd.temperature=four", "method.cwd.temperature"),
    ("method.cwd.temperature=0", "method.cwd.temperature must be > 0"),
    ("method.name=dist method.dist.intra_batch=all", "method.dist.intra_batch"),
    ("method.name=cwd+nosuch", "method.name"),
    ("method.name=kd+afdcd", None),  # both compute "kd": refused when built
    ("method.lambda_kd=1", "method.lambda_kd is now method.kd.weight"),
])
def test_bad_method_options_name_the_dotted_key(override, match):
    if match is None:
        from afdcd_bench.methods import BuildContext, build_method

        cfg = load_recipe("demo/afdcd", [override])
        ctx = BuildContext({"logits": 11, "features": 8, "head": 4}, {"logits": 11, "features": 8, "head": 4}, 11)
        with pytest.raises(ValueError, match="both compute the 'kd' term"):
            build_method(cfg.method, ctx)
        return
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        load_recipe("demo/cwd", override.split(" "))


def test_adversarial_term_refuses_maps_too_small_for_its_discriminator():
    with pytest.raises(ConfigError, match=r"method\.adv: the discriminator needs logit maps of at least 64x64"):
        load_recipe("demo/kd", ["method.name=kd+adv"])


def test_a_method_needing_a_teacher_without_one_names_teacher_checkpoint(tmp_path):
    cfg = load_recipe("demo/dist", [*TINY, f"output_dir={tmp_path}", "teacher.recipe=null"])
    with pytest.raises(FileNotFoundError, match="teacher.checkpoint"):
        train(cfg, show_progress=False)
    _reset()


def test_a_method_without_forward_cannot_be_built():
    from afdcd_bench.methods import BuildContext, Component

    class NoTerms(Component):
        pass

    with pytest.raises(TypeError, match="abstract method forward"):
        NoTerms(None, BuildContext({}, None, 11))
