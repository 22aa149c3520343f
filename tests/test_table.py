"""The results table on hand-made run records: means, stds, deltas, published, missing runs."""
import math

import pandas as pd
import pytest

from afdcd_bench.cli import main
from afdcd_bench.config import load_recipe, to_dict
from afdcd_bench.engine.records import record_path, write_record
from afdcd_bench.harness.table import expected_runs, records_frame, summary, write_tables


def rec(tmp, recipe, method, student, seed, miou, best=None, published=None, bench="cityscapes", overrides=()):
    write_record(record_path(tmp, recipe, seed), {
        "config": to_dict(load_recipe(recipe, [f"train.seed={seed}", *overrides])),
        "kind": "afdcd-bench-run", "recipe": recipe, "benchmark": bench, "method": method, "student": student,
        "seed": seed, "final_miou": miou, "best_miou": best if best is not None else miou, "wall_seconds": 10.0,
        "published_miou": published, "history": [{"step": 1, "miou": miou}], "final_iou": [miou, miou],
    })


@pytest.fixture
def records(tmp_path):
    s = "deeplabv3-resnet18_deepstem"
    rec(tmp_path, "cityscapes/teacher", "baseline", "deeplabv3-resnet101_deepstem", 0, 0.78, published=78.07)
    for seed, v in enumerate((0.70, 0.72, 0.74)):
        rec(tmp_path, "cityscapes/deeplabv3_resnet18/baseline", "baseline", s, seed, v, published=74.21)
    for seed, v in enumerate((0.75, 0.77)):
        rec(tmp_path, "cityscapes/deeplabv3_resnet18/afdcd", "afdcd", s, seed, v, best=v + 0.01, published=77.03)
    (tmp_path / "broken.json").write_text("{not json")  # ignored, not fatal
    return tmp_path


def test_summary_means_stds_deltas_and_published(records):
    t = summary(records_frame(records)).set_index("method")
    assert list(t.index) == ["teacher", "baseline", "afdcd"]
    assert t.loc["baseline", "miou_mean"] == pytest.approx(72.0) and t.loc["baseline", "miou_std"] == pytest.approx(2.0)
    assert t.loc["baseline", "n"] == 3 and t.loc["afdcd", "n"] == 2
    assert t.loc["afdcd", "miou_mean"] == pytest.approx(76.0) and t.loc["afdcd", "best_mean"] == pytest.approx(77.0)
    assert t.loc["afdcd", "delta"] == pytest.approx(4.0)
    assert t.loc["afdcd", "diff_published"] == pytest.approx(76.0 - 77.03)
    assert math.isnan(t.loc["teacher", "delta"]) and math.isnan(t.loc["teacher", "miou_std"])  # one seed: no std


def test_missing_runs_show_as_missing_never_zero(records):
    frame = records_frame(records)
    from afdcd_bench.config import list_recipes

    t = summary(frame, expected_runs(list_recipes("cityscapes")))
    kd = t[(t.student == "deeplabv3-resnet18_deepstem") & (t.method == "kd")].iloc[0]
    assert kd.n == 0 and math.isnan(kd.miou_mean) and math.isnan(kd.delta)
    mbv2 = t[t.student == "deeplabv3-mobilenetv2_100"]
    assert set(mbv2.method) == {"baseline", "kd", "afdcd"} and (mbv2.n == 0).all()
    assert mbv2.set_index("method").loc["afdcd", "published"] == 76.38
    paths = write_tables(t, records / "out")
    csv = pd.read_csv(paths[0])
    assert csv.loc[(csv.method == "kd") & (csv.student == "deeplabv3-resnet18_deepstem"), "miou_mean"].isna().all()
    md, tex = paths[1].read_text(), paths[2].read_text()
    assert "\\toprule" in tex and "missing" in tex and "72.00 $\\pm$ 2.00" in tex
    assert "| kd " in md


def test_table_command(records, capsys):
    assert main(["table", str(records)]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "72.00 +- 2.00" in out and "+4.00" in out
    assert (records / "table.tex").is_file()


def test_plot_writes_class_delta_and_curve_figures(records, capsys):
    assert main(["plot", str(records), "--out", str(records / "fig")]) == 0
    pngs = sorted(p.name for p in (records / "fig").glob("*.png"))
    assert pngs == ["cityscapes__deeplabv3-resnet18_deepstem__class_iou_delta.png", "cityscapes__deeplabv3-resnet18_deepstem__val_miou.png"]
    assert all((records / "fig" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert main(["plot", str(records / "absent")]) == 2
    (records / "empty").mkdir()
    assert main(["plot", str(records / "empty")]) == 1
