"""Every published pair has its recipes, with the published settings of docs/method.md."""
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from afdcd_bench.cli import main
from afdcd_bench.config import list_recipes, load_recipe, recipes_root

# docs/method.md table: classes, crop, iterations, lambda_kd, lambda_fd, lambda_ctr
METHOD = {
    "cityscapes": (19, [512, 1024], 40000, 1.0, 2e-6, 0.005),
    "voc": (21, [512, 512], 40000, 1.0, 1e-6, 0.005),
    "camvid": (11, [360, 360], 40000, 1.0, 8e-6, 0.01),
    "ade20k": (150, [512, 512], 40000, 0.5, 1e-6, 0.04),
    "coco_stuff_164k": (182, [512, 512], 80000, 0.5, 5e-6, 0.005),
}
# names in published_results.csv -> our backbone names (the released deep-stem nets)
NETS = {"deeplabv3-resnet18": "deeplabv3-resnet18_deepstem", "pspnet-resnet18": "pspnet-resnet18_deepstem",
        "deeplabv3-mobilenetv2": "deeplabv3-mobilenetv2_100", "deeplabv3-resnet101": "deeplabv3-resnet101_deepstem"}
OURS = ("teacher", "baseline", "kd", "afdcd")


V2_SOURCE = "CIRKDv2 README (winycg/CIRKD at dab64db)"


def published_rows(protocol: str = "2023"):
    """The published rows of one protocol (2025: CIRKDv2's table)."""
    with open(recipes_root() / "published_results.csv") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if (r["source"] == V2_SOURCE) == (protocol == "2025")]


def recipe_table(protocol: str = "2023"):
    out = {}
    for name in list_recipes():
        cfg = load_recipe(name)
        if cfg.ablation_of or (cfg.protocol != protocol and not name.endswith("/teacher")):
            continue  # variants of a main recipe, run with --ablations
        method = "teacher" if name.endswith("/teacher") else cfg.method.name
        out[(cfg.benchmark, f"{cfg.student.arch}-{cfg.student.backbone}", method)] = cfg
    return out


def test_vendored_published_table_matches_the_shared_reference():
    """The shared reference's rows, unchanged and in order, then the rows added since (KT's), each
    naming its source."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published_results.csv"
    ours = (recipes_root() / "published_results.csv").read_text()
    if shared.is_file():  # beside the checkout in CI and in development
        assert ours.startswith(shared.read_text())
        added = list(csv.DictReader(io.StringIO(ours)))[len(list(csv.DictReader(io.StringIO(shared.read_text())))):]
        kt = [r for r in added if r["method"] == "kt"]
        assert [(r["student"], r["method"], r["miou"]) for r in kt] == [
            ("deeplabv3-resnet18", "kt", "77.98"), ("deeplabv3-mobilenetv2", "kt", "76.17"), ("pspnet-resnet18", "kt", "76.49")]
        assert all(r["source"].startswith("KT README") for r in kt)
        v2 = added[len(kt):]  # then CIRKDv2's table (test_every_cirkdv2_row_has_a_2025_recipe_with_its_number)
        assert len(v2) == 43 and all(r["source"] == "CIRKDv2 README (winycg/CIRKD at dab64db)" for r in v2)
        assert {r["split"] for r in v2 if r["benchmark"] == "cityscapes"} == {"test-server"}
        assert {r["split"] for r in v2 if r["benchmark"] != "cityscapes"} == {"val"}


def test_kt_recipes_carry_the_published_numbers_and_the_release_schedule():
    rows = {(r["student"], r["method"]): r for r in published_rows() if r["method"] == "kt"}
    for student, net in (("deeplabv3-resnet18", "deeplabv3_resnet18"), ("deeplabv3-mobilenetv2", "deeplabv3_mobilenetv2"),
                         ("pspnet-resnet18", "pspnet_resnet18")):
        cfg = load_recipe(f"cityscapes/{net}/kt")
        assert cfg.published.miou == float(rows[(student, "kt")]["miou"])
        t, k = cfg.train, cfg.method.kt
        assert (t.iterations, t.effective_batch, t.lr, t.weight_decay, t.val_interval, t.lr_floor) == (40000, 16, 0.02, 5e-4, 800, 0.0)
        assert (k.kd_weight, k.aux_factor, k.lt_weight, k.ft_weight, k.triplet_weight, k.temperature) == (1, 0.4, 1, 1, 1, 4.0)
        assert round(k.switch_fraction * t.iterations) == 10000 and not k.train_tailoring
        variant = load_recipe(f"cityscapes/{net}/ablations/kt_trained_tailoring")
        assert variant.ablation_of == cfg.name and variant.method.kt.train_tailoring and variant.published.miou is None
    assert "DeepLabV3-ResNet18" in (recipes_root() / "cityscapes/deeplabv3_mobilenetv2/kt.yaml").read_text()  # the mislabel, said


def test_every_published_row_of_our_methods_has_a_recipe_with_its_number():
    table = recipe_table()
    rows = [r for r in published_rows() if r["method"] in OURS]
    assert len(rows) == 24
    for r in rows:
        net = NETS[r["teacher"]] if r["method"] == "teacher" else NETS[r["student"]]
        cfg = table.get((r["benchmark"], net, r["method"]))
        assert cfg is not None, r
        assert cfg.published.miou == float(r["miou"]), r


def test_every_published_pair_has_baseline_kd_and_afdcd():
    table = recipe_table()
    pairs = {(r["benchmark"], NETS[r["student"]]) for r in published_rows() if r["student"] != "-"}
    for bench, net in pairs:
        for method in ("baseline", "kd", "afdcd"):
            assert (bench, net, method) in table, (bench, net, method)
        assert (bench, "deeplabv3-resnet101_deepstem", "teacher") in table


@pytest.mark.parametrize("bench", sorted(METHOD))
def test_recipes_carry_the_papers_settings(bench):
    classes, crop, iters, lkd, lfd, lctr = METHOD[bench]
    names = list_recipes(bench)
    assert names
    for name in names:
        cfg = load_recipe(name)
        if cfg.protocol == "2025":  # CIRKDv2's settings (test_the_2025_recipes_carry_cirkdv2s_settings)
            continue
        d = cfg.data
        assert cfg.num_classes == classes and d.crop_size == crop and d.scale_range == [0.5, 2.0] and d.scale_step == 0.1 and d.flip
        t = cfg.train
        if name.endswith("_authors_schedule") or name.endswith("/maskd_tokens") or cfg.method.name == "kt":  # their own (tests below)
            continue
        # teachers too: CIRKD v1's defaults, 40k (COCO-Stuff 80k) at batch 16, lr 0.02
        assert (t.iterations, t.effective_batch, t.lr, t.momentum, t.weight_decay, t.poly_power, t.optimizer) == (iters, 16, 0.02, 0.9, 1e-4, 0.9, "sgd")
        if name.endswith("/teacher") or cfg.ablation_of:
            continue
        m = cfg.method
        kd_only_row = name.endswith("/kd") and bench in ("ade20k", "coco_stuff_164k")  # published from CIRKD's KD run
        assert (m.aux_weight, m.clip_grad_norm) == (0.4, 15.0)
        if m.name == "kd":
            assert (m.kd.weight, m.kd.temperature) == (1.0 if kd_only_row else lkd, 1.0)
        if m.name == "afdcd":
            a = m.afdcd
            assert (a.lambda_kd, a.lambda_fd, a.lambda_ctr, a.temperature) == (lkd, lfd, lctr, 1.0)
            assert (a.mode, a.groups, a.patch, a.tau, a.distance, a.mask, a.mask_ratio, a.projector) == ("omni", 16, [4, 4], 0.07, "l1", "random", 0.75, "basic")
            assert a.pool == (0 if bench == "camvid" else 4)
        assert cfg.teacher.backbone == "resnet101_deepstem" and cfg.teacher.recipe == f"{bench}/teacher"
        # CamVid: selected on val, reported on test; the Af-DCD rows were published selecting on test
        assert (d.val_split, d.test_split) == (("val", "test") if bench == "camvid" else ("val", None))
        assert cfg.published.selected_on == ("test" if bench == "camvid" and m.name == "afdcd" else "val")
    assert load_recipe(names[0]).eval.all_slots == (bench == "coco_stuff_164k")


def test_cityscapes_r18_variants_and_ablations_differ_from_the_main_recipe_in_one_named_way():
    from afdcd_bench.config import settings, settings_diff, to_dict
    from afdcd_bench.harness.reproduce import plan

    main_name = "cityscapes/deeplabv3_resnet18/afdcd"
    main = settings(to_dict(load_recipe(main_name)))
    expected = {
        "afdcd_enhanced": ["method.afdcd.projector: 'basic' -> 'enhanced'"],
        "afdcd_center_enhanced": ["method.afdcd.mask: 'random' -> 'center'", "method.afdcd.projector: 'basic' -> 'enhanced'"],
        "ablations/fd_only": ["method.afdcd.lambda_ctr: 0.005 -> 0.0"],
        "ablations/contrast_only": ["method.afdcd.lambda_fd: 2e-06 -> 0.0"],
        "ablations/spatial": ["method.afdcd.mode: 'omni' -> 'spatial'"],
        "ablations/channel": ["method.afdcd.mode: 'omni' -> 'channel'"],
        "ablations/l2": ["method.afdcd.distance: 'l1' -> 'l2'"],
    }
    for variant, diff in expected.items():
        cfg = load_recipe(f"cityscapes/deeplabv3_resnet18/{variant}")
        assert cfg.ablation_of == main_name and cfg.published.miou is None
        assert settings_diff(main, settings(to_dict(cfg))) == diff, variant
    # Af-DCD's masked mimicking added to other distillers: a recipe setting ("+fd")
    fd = {"method.fd": ("<unset>", {"weight": 2e-6, "mask": "random", "mask_ratio": 0.75, "projector": "basic"})}
    for variant, base, name in (("kd_fd", "kd", "kd+fd"), ("cwd_fd", "cwd", "cwd+kd+adv+fd")):
        cfg = load_recipe(f"cityscapes/deeplabv3_resnet18/ablations/{variant}")
        main_cfg = load_recipe(f"cityscapes/deeplabv3_resnet18/{base}")
        assert cfg.ablation_of == main_cfg.name and cfg.published.miou is None
        diff = settings_diff(settings(to_dict(main_cfg)), settings(to_dict(cfg)))
        assert diff == [f"method.fd: '<unset>' -> {fd['method.fd'][1]!r}", f"method.name: {main_cfg.method.name!r} -> {name!r}"]
        expected[f"ablations/{variant}"] = diff
    # CIRKD's queues as they should work, against the released updates of the published recipe
    main_cfg = load_recipe("cityscapes/deeplabv3_resnet18/cirkd")
    cfg = load_recipe("cityscapes/deeplabv3_resnet18/ablations/cirkd_class_queue")
    assert cfg.ablation_of == main_cfg.name and cfg.published.miou is None
    diff = settings_diff(settings(to_dict(main_cfg)), settings(to_dict(cfg)))
    assert diff == ["method.cirkd.enqueue: 'before_loss' -> 'after_step'", "method.cirkd.pixel_enqueue: 'released' -> 'class'"]
    expected["ablations/cirkd_class_queue"] = diff
    assert not any("ablations" in n or "_enhanced" in n for n in plan("cityscapes"))
    fitnet = {f"cityscapes/{pair}/ablations/{v}" for pair in ("deeplabv3_resnet18", "deeplabv3_mobilenetv2", "pspnet_resnet18")
              for v in ("fitnet", "fitnet_kd", "kt_trained_tailoring")}
    assert set(plan("cityscapes", ablations=True)) - set(plan("cityscapes")) == {
        f"cityscapes/deeplabv3_resnet18/{v}" for v in expected if not v.startswith("ablations/fitnet")} | fitnet


def test_every_pair_with_a_kd_recipe_has_fitnet_alone_and_with_kd_differing_in_the_fitnet_term_only():
    from afdcd_bench.config import settings, settings_diff, to_dict

    pairs = sorted(n.rsplit("/", 1)[0] for n in list_recipes() if n.endswith("/kd") and "/ablations/" not in n
                   and load_recipe(n).protocol == "2023")
    assert len(pairs) == 10  # 9 benchmark pairs and the demo
    for pair in pairs:
        for variant, main, name in (("fitnet", "baseline", "fitnet"), ("fitnet_kd", "kd", "kd+fitnet")):
            cfg = load_recipe(f"{pair}/ablations/{variant}")
            main_cfg = load_recipe(f"{pair}/{main}")
            assert cfg.ablation_of == main_cfg.name and cfg.published.miou is None, (pair, variant)
            diff = settings_diff(settings(to_dict(main_cfg)), settings(to_dict(cfg)))
            assert diff[:1] == ["method.fitnet: '<unset>' -> {'weight': 10.0}"], (pair, variant, diff)
            assert diff[1:] == [f"method.name: {main_cfg.method.name!r} -> {name!r}"], (pair, variant, diff)


def test_recipes_json_names_benchmark_pair_and_method(capsys):
    assert main(["recipes", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["recipe"]: r for r in rows}
    r = by_name["cityscapes/deeplabv3_resnet18/afdcd"]
    assert (r["benchmark"], r["method"], r["student"], r["teacher"], r["published_miou"]) == (
        "cityscapes", "afdcd", "deeplabv3-resnet18_deepstem", "deeplabv3-resnet101_deepstem", 77.03)
    assert r["config"]["method"]["afdcd"]["lambda_fd"] == 2e-6
    assert by_name["cityscapes/teacher"]["method"] == "teacher"


def test_ablations_of_a_benchmark_without_any_are_refused(tmp_path, monkeypatch):
    from afdcd_bench.harness.reproduce import ReproduceError, plan

    assert plan("voc", ablations=True)  # every benchmark has some now (FitNet's): one without, in a recipes root of its own
    root = tmp_path / "recipes"
    shutil.copytree(recipes_root() / "voc", root / "voc", ignore=shutil.ignore_patterns("ablations"))
    monkeypatch.setenv("AFDCD_RECIPES", str(root))
    with pytest.raises(ReproduceError, match="voc has no ablation recipes"):
        plan("voc", ablations=True)


def test_every_published_competitor_row_has_a_recipe_on_the_benchmarks_one_teacher():
    """SKD, IFVD, CWD, DIST, CIRKD and MasKD rows: a recipe running that method, with the published
    number, under the benchmark's teacher recipe (so the table compares them with everything else of the pair)."""
    by_row = {}
    for name in list_recipes():
        cfg = load_recipe(name)
        if cfg.published.miou is not None and cfg.teacher is not None:
            student = f"{cfg.student.arch}-{cfg.student.backbone.replace('_deepstem', '').replace('_100', '')}"
            by_row[(cfg.benchmark, student, cfg.method.components[0], cfg.published.miou)] = cfg
    rows = [r for r in published_rows() if r["method"] in ("skd", "ifvd", "cwd", "dist", "cirkd", "maskd")]
    assert len(rows) == 30
    for r in rows:
        key = (r["benchmark"], r["student"], r["method"], float(r["miou"]))
        assert key in by_row, key
        cfg = by_row[key]
        assert cfg.teacher.recipe == f"{r['benchmark']}/teacher"
        if r["method"] in ("skd", "ifvd", "cwd"):  # the released scripts add logit KD (and, where it fits, the discriminator)
            assert "kd" in cfg.method.components
            assert ("adv" in cfg.method.components) == (r["benchmark"] != "camvid")
        if r["method"] == "cirkd":  # with logit KD and the released queue updates behind the published numbers
            assert "kd" in cfg.method.components
            assert (cfg.method.cirkd.pixel_enqueue, cfg.method.cirkd.enqueue) == ("released", "before_loss")
            assert cfg.method.cirkd.pixel_weight == (0.01 if r["benchmark"] == "voc" else 0.1)
        if r["method"] in ("dist", "maskd"):  # published on the authors' schedule; the common one is the main row
            assert cfg.name.endswith("_authors_schedule") and (cfg.train.weight_decay, cfg.train.lr_floor) != (1e-4, 0.0)
            main = load_recipe(cfg.name.replace("_authors_schedule", ""))
            assert main.published.miou is None and (main.train.weight_decay, main.train.lr_floor) == (1e-4, 0.0)
            assert main.method.name == cfg.method.name
        if r["method"] == "maskd":
            assert cfg.method.maskd.stage_recipe == f"{r['benchmark']}/maskd_tokens"
    dist = load_recipe("cityscapes/deeplabv3_resnet18/dist_authors_schedule")
    assert (dist.train.weight_decay, dist.train.lr_floor, dist.method.dist.intra_batch) == (5e-4, 1e-4, "device")
    tokens = load_recipe("cityscapes/maskd_tokens")
    assert (tokens.train.iterations, tokens.train.lr, tokens.train.weight_decay) == (10000, 0.1, 1e-3)


def test_reproduce_methods_picks_recipes_with_the_teacher_and_the_baselines():
    from afdcd_bench.harness.reproduce import ReproduceError, plan

    names = plan("cityscapes", methods=["cwd", "dist_authors_schedule"])
    assert names[0] == "cityscapes/teacher"
    students = {n.split("/", 1)[1] for n in names[1:]}
    assert students == {f"{s}/baseline" for s in ("deeplabv3_resnet18", "deeplabv3_mobilenetv2", "pspnet_resnet18")} | {
        "deeplabv3_resnet18/cwd", "deeplabv3_mobilenetv2/cwd", "deeplabv3_resnet18/dist_authors_schedule"}
    assert all("baseline" in n for n in names[1:4])  # baselines first: every delta needs them
    with pytest.raises(ReproduceError, match="--methods nosuch: no cityscapes recipe runs it"):
        plan("cityscapes", methods=["nosuch"])
    # a stage learnt on the teacher comes right after it, and only for the students that build on it
    maskd = plan("cityscapes", methods=["maskd"])
    assert maskd[:2] == ["cityscapes/teacher", "cityscapes/maskd_tokens"] and "cityscapes/deeplabv3_resnet18/maskd" in maskd
    assert "cityscapes/maskd_tokens" not in plan("cityscapes", methods=["cirkd"])
    assert "demo/cirkd" not in plan("demo") and "demo/cirkd" in plan("demo", methods=["cirkd"])  # on_request


def test_the_2025_recipes_carry_cirkdv2s_settings_and_test_server_numbers():
    """SegFormer MiT-B4 -> B0 on Cityscapes as CIRKDv2's scripts train it (AdamW 2e-4, 160k iterations at
    batch 8, 1024x1024 crops), from MiT's ImageNet encoders, its published numbers marked as Cityscapes
    test-server ones; the 2023 table (reproduce's default) does not run them, --only and --protocol do."""
    from afdcd_bench.harness.reproduce import plan

    every = [n for n in list_recipes("cityscapes") if load_recipe(n).protocol == "2025"]
    names = [n for n in every if "segformer" in n]
    assert sorted(names) == sorted(["cityscapes/segformer_mitb4/teacher", "cityscapes/segformer_mitb4/maskd_tokens",
                                    *(f"cityscapes/segformer_mitb0/{m}" for m in ("baseline", "kd", "afdcd", "dist", "cwd", "fitnet",
                                                                                 "cirkdv2", "kt", "maskd", "skd", "ifvd"))])
    for name in names:
        cfg = load_recipe(name)
        t = cfg.train
        if name.endswith("/maskd_tokens"):  # MasKD's stage on the B4 teacher: its own released schedule
            assert (t.optimizer, t.lr, t.iterations, cfg.teacher.recipe) == ("sgd", 0.1, 10000, "cityscapes/segformer_mitb4/teacher")
            continue
        assert (t.optimizer, t.lr, t.weight_decay, t.iterations, t.effective_batch, t.poly_power) == ("adamw", 2e-4, 1e-4, 160000, 8, 0.9)
        assert cfg.data.crop_size == [1024, 1024] and cfg.data.scale_step == 0.1 and cfg.student.arch == "segformer"
        assert cfg.student.pretrained.endswith(f"weights/{cfg.student.backbone}.safetensors") and not cfg.student.aux
        if not name.endswith("/teacher"):
            assert (cfg.teacher.arch, cfg.teacher.backbone, cfg.teacher.recipe) == ("segformer", "mit_b4", "cityscapes/segformer_mitb4/teacher")
    published = {n: (load_recipe(n).published.miou, load_recipe(n).published.split) for n in names if load_recipe(n).published.miou}
    assert published == {"cityscapes/segformer_mitb4/teacher": (80.38, "test-server"),
                         "cityscapes/segformer_mitb0/baseline": (74.12, "test-server"),
                         "cityscapes/segformer_mitb0/cirkdv2": (75.52, "test-server")}
    v2 = load_recipe("cityscapes/segformer_mitb0/cirkdv2").method.cirkdv2  # the SegFormer trainer: no context block
    assert (v2.context, v2.pixel_queue, v2.minibatch_images, v2.minibatch_pool_from) == (False, 2000, 1, 256)
    assert not set(plan("cityscapes")) & set(every)
    # the 2025 table: its recipes, and the 2023 DeepLabV3-ResNet101 teacher (and MasKD's tokens on it) its CNN students learn from
    assert set(plan("cityscapes", protocols=("2025",))) == {*every, "cityscapes/teacher", "cityscapes/maskd_tokens"}
    assert load_recipe("cityscapes/segformer_mitb0/maskd").method.maskd.stage_recipe == "cityscapes/segformer_mitb4/maskd_tokens"
    assert load_recipe("cityscapes/deeplabv3_mobilenetv3_small/maskd").method.maskd.stage_recipe == "cityscapes/maskd_tokens"
    from afdcd_bench.harness.released_scores import recipe_of
    from afdcd_bench.models.fetch import BY_KEY

    entry = BY_KEY["cityscapes-segformer-teacher"]  # score-released scores it with its own recipe's protocol
    assert recipe_of(entry) == "cityscapes/segformer_mitb4/teacher" and entry.published == published[recipe_of(entry)][0]


def test_recipes_lists_the_2025_pairs_with_their_test_server_numbers(capsys):
    assert main(["recipes"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert lines["cityscapes/segformer_mitb0/baseline"].split()[1:5] == ["cityscapes", "2025", "baseline", "segformer-mit_b0"]
    assert lines["cityscapes/segformer_mitb0/baseline"].endswith("74.12 (test server)")
    assert lines["cityscapes/segformer_mitb0/kd"].split()[5] == "segformer-mit_b4"
    assert lines["cityscapes/deeplabv3_resnet18/afdcd"].split()[2] == "2023" and lines["cityscapes/deeplabv3_resnet18/afdcd"].endswith("77.03")


# CIRKDv2's scripts (scripts/train_cirkdv2/<benchmark>/<pair>.sh at dab64db): lambda fitnet per pair
V2_FITNET = {("cityscapes", "deeplabv3-resnet18"): 1, ("cityscapes", "upernet-resnet18"): 1,
             ("cityscapes", "deeplabv3-mobilenetv3-small"): 1, ("cityscapes", "pspnet-mobilenetv3-small"): 10,
             ("cityscapes", "deeplabv3-mobilevit-xxs"): 10, ("cityscapes", "pspnet-mobilevit-xxs"): 1,
             ("ade20k", "deeplabv3-resnet18"): 1, ("ade20k", "upernet-resnet18"): 10,
             ("ade20k", "deeplabv3-mobilenetv3-large"): 10, ("ade20k", "pspnet-mobilenetv3-large"): 1,
             ("voc", "deeplabv3-mobilenetv3-small"): 10, ("voc", "deeplabv3-mobilenetv3-large"): 10,
             ("voc", "pspnet-mobilenetv3-small"): 10, ("voc", "pspnet-mobilenetv3-large"): 10,
             ("coco_stuff_164k", "deeplabv3-resnet18"): 10, ("coco_stuff_164k", "pspnet-mobilenetv3-small"): 10,
             ("coco_stuff_164k", "deeplabv3-mobilenetv3-small"): 1, ("coco_stuff_164k", "deeplabv3-mobilenetv3-large"): 10}
V2_NETS = {"deeplabv3-resnet18": ("deeplabv3", "resnet18_deepstem"), "upernet-resnet18": ("upernet", "resnet18_deepstem"),
           "deeplabv3-mobilenetv3-small": ("deeplabv3", "mobilenetv3_small_100"),
           "deeplabv3-mobilenetv3-large": ("deeplabv3", "mobilenetv3_large_100"),
           "pspnet-mobilenetv3-small": ("pspnet", "mobilenetv3_small_100"), "pspnet-mobilenetv3-large": ("pspnet", "mobilenetv3_large_100"),
           "deeplabv3-mobilevit-xxs": ("deeplabv3", "mobilevit_xxs"), "pspnet-mobilevit-xxs": ("pspnet", "mobilevit_xxs"),
           "segformer-mit-b0": ("segformer", "mit_b0")}


def test_every_cirkdv2_row_has_a_2025_recipe_with_its_number_split_and_schedule():
    """Each student row of CIRKDv2's table: a baseline and a cirkdv2+kd recipe on the 2025 protocol with
    the published number and split, the script's schedule (SGD 0.01 / batch 8 on Cityscapes, 0.02 / 16
    elsewhere, 80k iterations; MobileViT: AdamW 9e-4, weight decay 0.01), lambda fitnet and the
    release's images per GPU for the mini-batch terms; every teacher row names the benchmark's teacher."""
    rows = [r for r in published_rows("2025") if r["student"] != "-"]
    assert len(rows) == 38
    found = {}
    for name in list_recipes():
        cfg = load_recipe(name)
        if cfg.protocol == "2025" and cfg.published.miou is not None and not name.endswith("/teacher"):
            found[(cfg.benchmark, cfg.student.arch, cfg.student.backbone, cfg.method.components[0])] = cfg
    for r in rows:
        arch, backbone = V2_NETS[r["student"]]
        cfg = found.pop((r["benchmark"], arch, backbone, r["method"]))
        assert (cfg.published.miou, cfg.published.split) == (float(r["miou"]), r["split"]), r
        if arch == "segformer":
            continue  # test_the_2025_recipes_carry_cirkdv2s_settings_and_test_server_numbers
        t, city = cfg.train, r["benchmark"] == "cityscapes"
        assert cfg.teacher.recipe == f"{r['benchmark']}/teacher" and t.iterations == 80000
        assert cfg.student.aux == backbone.startswith("resnet") and cfg.student.pretrained.endswith(f"weights/{backbone}.safetensors")
        if arch == "deeplabv3" and backbone.startswith("resnet"):  # v2 widened this head from v1's 128
            assert cfg.student.head_width == 512
        if "mobilevit" in backbone:
            assert (t.optimizer, t.lr, t.weight_decay, t.effective_batch) == ("adamw", 9e-4, 0.01, 8)
        else:
            assert (t.optimizer, t.lr, t.weight_decay, t.effective_batch) == ("sgd", 0.01 if city else 0.02, 1e-4, 8 if city else 16)
        if r["method"] == "cirkdv2":
            v2 = cfg.method.cirkdv2
            assert cfg.method.name == "cirkdv2+kd" and v2.context and v2.fitnet_weight == V2_FITNET[(r["benchmark"], r["student"])]
            assert v2.minibatch_images == {"cityscapes": 1, "ade20k": 2, "voc": 4, "coco_stuff_164k": 2}[r["benchmark"]]
            assert (v2.channel_kd_weight, v2.channel_batch_weight, v2.channel_memory_weight, v2.pixel_queue) == (100, 1, 0.1, 20000)
            assert (v2.pixel_enqueue, v2.enqueue) == ("released", "before_loss")
    assert not found, f"2025 recipes with a published number and no row: {sorted(found)}"
    teachers = {r["benchmark"]: float(r["miou"]) for r in published_rows("2025") if r["method"] == "teacher"
                and r["teacher"] == "deeplabv3-resnet101"}
    assert teachers == {"cityscapes": 78.30, "ade20k": 43.83, "voc": 77.80, "coco_stuff_164k": 38.48}


def test_the_named_2025_pairs_run_every_distiller_and_the_heterogeneous_pair_resizes_the_teacher():
    every = {"kd", "afdcd", "dist", "cwd", "fitnet", "cirkdv2", "kt", "maskd", "skd", "ifvd"}
    for folder in ("deeplabv3_mobilenetv3_small", "deeplabv3_resnet18_2025", "segformer_mitb0"):
        methods = {load_recipe(n).method.components[0] for n in list_recipes("cityscapes") if f"/{folder}/" in n}
        # CIRKD v1 on the CNNs only: its unpooled mini-batch term on SegFormer's 256x256 head maps would need
        # 65536^2 similarities per pair of images (CIRKDv2 pools them)
        assert methods == {"baseline", *every, *(["cirkd"] if folder != "segformer_mitb0" else [])}, folder
    hetero = [n for n in list_recipes("cityscapes") if "/deeplabv3_resnet18_from_mitb4/" in n]
    assert {load_recipe(n).method.components[0] for n in hetero} == every | {"cirkd"}
    base = load_recipe("cityscapes/deeplabv3_resnet18_2025/baseline")
    for name in hetero:
        cfg = load_recipe(name)
        assert name.rsplit("/", 1)[1].startswith("mitb4_") and cfg.method.resize_teacher  # its own table label
        assert (cfg.teacher.arch, cfg.teacher.backbone, cfg.teacher.recipe) == ("segformer", "mit_b4", "cityscapes/segformer_mitb4/teacher")
        assert (cfg.train, cfg.data, cfg.student) == (base.train, base.data, base.student)  # compared with that baseline


def test_only_keeps_the_folder_of_that_name_else_every_name_containing_it():
    """`--only deeplabv3_resnet18` is the 2023 pair's folder, not the 2025 folders whose names contain it;
    `--only segformer` names no folder, so every SegFormer recipe; each with its baseline and teacher."""
    from afdcd_bench.harness.reproduce import only_these, plan, protocols_of

    protocols = protocols_of(None, "x")
    names = plan("cityscapes", protocols=protocols)
    r18 = only_these("cityscapes", names, "deeplabv3_resnet18", protocols)
    assert "cityscapes/deeplabv3_resnet18/afdcd" in r18 and "cityscapes/teacher" in r18
    assert not [n for n in r18 if "_2025" in n or "from_mitb4" in n or "segformer" in n]
    hetero = only_these("cityscapes", names, "deeplabv3_resnet18_from_mitb4", protocols)
    # its runs, the 2025 R18 baseline they are compared with, and the SegFormer-B4 teacher with MasKD's tokens on it
    assert {n.rsplit("/", 1)[0] for n in hetero} == {"cityscapes/deeplabv3_resnet18_from_mitb4", "cityscapes/segformer_mitb4",
                                                    "cityscapes/deeplabv3_resnet18_2025"}
    assert [n for n in hetero if "_2025" in n] == ["cityscapes/deeplabv3_resnet18_2025/baseline"]
    segformer = only_these("cityscapes", names, "segformer", protocols)
    assert "cityscapes/segformer_mitb0/kd" in segformer and "cityscapes/deeplabv3_resnet18_from_mitb4/mitb4_kd" not in segformer
