"""Every published pair has its recipes, with METHOD.md's settings (issue 7)."""
import csv
import json
from pathlib import Path

import pytest

from afdcd_bench.cli import main
from afdcd_bench.config import list_recipes, load_recipe, recipes_root

# METHOD.md's table: classes, crop, iterations, lambda_kd, lambda_fd, lambda_ctr
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


def published_rows():
    with open(recipes_root() / "published_results.csv") as f:
        return list(csv.DictReader(f))


def recipe_table():
    out = {}
    for name in list_recipes():
        cfg = load_recipe(name)
        method = "teacher" if name.endswith("/teacher") else cfg.method.name
        out[(cfg.benchmark, f"{cfg.student.arch}-{cfg.student.backbone}", method)] = cfg
    return out


def test_vendored_published_table_matches_the_shared_reference():
    shared = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published_results.csv"
    if shared.is_file():  # beside the checkout in CI and in development
        assert shared.read_text() == (recipes_root() / "published_results.csv").read_text()


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
        assert cfg.num_classes == classes and cfg.data.crop_size == crop and cfg.data.scale_range == [0.5, 2.0] and cfg.data.flip
        t = cfg.train
        if name.endswith("/teacher"):
            assert (t.iterations, t.effective_batch) == (80000, 8)  # CIRKD's teacher schedule
            continue
        assert (t.iterations, t.effective_batch, t.lr, t.momentum, t.weight_decay, t.poly_power, t.optimizer) == (iters, 16, 0.02, 0.9, 1e-4, 0.9, "sgd")
        m = cfg.method
        assert (m.lambda_kd, m.lambda_fd, m.lambda_ctr, m.temperature, m.aux_weight, m.clip_grad_norm) == (lkd, lfd, lctr, 1.0, 0.4, 15.0)
        a = m.afdcd
        assert (a.mode, a.groups, a.patch, a.tau, a.distance, a.mask, a.mask_ratio, a.projector) == ("omni", 16, [4, 4], 0.07, "l1", "random", 0.75, "basic")
        assert a.pool == (0 if bench == "camvid" else 4)
        assert cfg.teacher.backbone == "resnet101_deepstem" and cfg.teacher.recipe == f"{bench}/teacher"
    assert load_recipe(names[0]).eval.all_slots == (bench == "coco_stuff_164k")
    assert load_recipe(names[0]).data.val_split == ("test" if bench == "camvid" else "val")


def test_recipes_json_names_benchmark_pair_and_method(capsys):
    assert main(["recipes", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["recipe"]: r for r in rows}
    r = by_name["cityscapes/deeplabv3_resnet18/afdcd"]
    assert (r["benchmark"], r["method"], r["student"], r["teacher"], r["published_miou"]) == (
        "cityscapes", "afdcd", "deeplabv3-resnet18_deepstem", "deeplabv3-resnet101_deepstem", 77.03)
    assert r["config"]["method"]["lambda_fd"] == 2e-6
    assert by_name["cityscapes/teacher"]["method"] == "teacher"
