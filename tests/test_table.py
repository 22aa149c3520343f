"""The results table on hand-made run records: means, stds, deltas, published, missing runs."""
import math

import pandas as pd
import pytest

from afdcd_bench.cli import main
from afdcd_bench.config import load_recipe, to_dict
from afdcd_bench.engine.records import record_path, write_record
from afdcd_bench.harness.table import expected_runs, records_frame, summary, write_tables


def rec(tmp, recipe, method, student, seed, miou, best=None, published=None, bench="cityscapes", overrides=(), **extra):
    write_record(record_path(tmp, recipe, seed), {
        "config": to_dict(load_recipe(recipe, [f"train.seed={seed}", *overrides])),
        "kind": "afdcd-bench-run", "recipe": recipe, "benchmark": bench, "method": method, "student": student,
        "seed": seed, "final_miou": miou, "best_miou": max(best if best is not None else miou, miou), "wall_seconds": 10.0,
        "published_miou": published, "history": [{"step": 1, "miou": best if best is not None else miou}, {"step": 2, "miou": miou}],
        "final_iou": [miou, miou], **extra,
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
    assert t.loc["baseline", "final_mean"] == pytest.approx(72.0) and t.loc["baseline", "final_std"] == pytest.approx(2.0)
    assert t.loc["baseline", "n"] == 3 and t.loc["afdcd", "n"] == 2
    assert t.loc["afdcd", "final_mean"] == pytest.approx(76.0) and t.loc["afdcd", "best_mean"] == pytest.approx(77.0)
    assert t.loc["afdcd", "delta_final"] == pytest.approx(4.0) and t.loc["afdcd", "delta_best"] == pytest.approx(5.0)
    # published numbers are best-of-validations: compared with the best, not the final checkpoint
    assert t.loc["afdcd", "diff_published"] == pytest.approx(77.0 - 77.03)
    assert t.loc["afdcd", "precision"] == "bf16"  # the recipes' precision, shown beside the numbers
    assert math.isnan(t.loc["teacher", "delta_best"]) and math.isnan(t.loc["teacher", "final_std"])  # one seed: no std


def test_missing_runs_show_as_missing_never_zero(records):
    frame = records_frame(records)
    from afdcd_bench.harness.reproduce import plan

    t = summary(frame, expected_runs(plan("cityscapes")))  # as `table` does: ablations only where some ran
    kd = t[(t.student == "deeplabv3-resnet18_deepstem") & (t.method == "kd")].iloc[0]
    assert kd.n == 0 and math.isnan(kd.final_mean) and math.isnan(kd.delta_best)
    mbv2 = t[t.student == "deeplabv3-mobilenetv2_100"]
    assert set(mbv2.method) == {"baseline", "kd", "afdcd", "skd+kd+adv", "ifvd+kd+adv", "cwd+kd+adv", "cirkd+kd", "maskd",
                                "maskd (maskd_authors_schedule)", "kt"} and (mbv2.n == 0).all()
    assert mbv2.set_index("method").loc["afdcd", "published"] == 76.38
    paths = write_tables(t, records / "out")
    csv = pd.read_csv(paths[0])
    assert csv.loc[(csv.method == "kd") & (csv.student == "deeplabv3-resnet18_deepstem"), "final_mean"].isna().all()
    md, tex = paths[1].read_text(), paths[2].read_text()
    assert "\\toprule" in tex and "missing" in tex and "72.00 $\\pm$ 2.00 (n=3)" in tex and "Af-DCD" in tex
    import re

    assert re.search(r"\|\s*Cityscapes\s*\|\s*DeepLabV3-R18\s*\|\s*Baseline\s*\|\s*72\.00 ± 2\.00 \(n=3\)\s*\|", md)
    assert re.search(r"\|\s*KD\s*\|", md)
    assert "nan" not in md and "+- -" not in md and "deeplabv3-resnet18_deepstem" not in md  # display names, no raw cells
    assert md.startswith("mIoU (%) on val: best = the best of the periodic validations")
    teacher = next(line for line in md.splitlines() if "| Teacher" in line)
    assert "78.00 (n=1)" in teacher  # one seed: no std


def test_table_command(records, capsys):
    assert main(["table", str(records)]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "72.00 +- 2.00" in out and "+4.00" in out and "+5.00" in out
    assert (records / "table.tex").is_file()


def test_plot_writes_class_delta_and_curve_figures(records, capsys):
    assert main(["plot", str(records), "--out", str(records / "fig")]) == 0
    pngs = sorted(p.name for p in (records / "fig").glob("*.png"))
    assert pngs == ["cityscapes__deeplabv3-resnet18_deepstem__class_iou_delta.png", "cityscapes__deeplabv3-resnet18_deepstem__val_miou.png"]
    assert all((records / "fig" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert main(["plot", str(records / "absent")]) == 2
    (records / "empty").mkdir()
    assert main(["plot", str(records / "empty")]) == 1


def test_camvid_reports_test_at_the_val_selected_checkpoint_and_compares_test_selected_rows_like_for_like(tmp_path):
    s = "deeplabv3-resnet18_deepstem"
    test = dict(test_split="test")
    rec(tmp_path, "camvid/deeplabv3_resnet18/baseline", "baseline", s, 0, 0.60, best=0.61, published=66.92, bench="camvid",
        test_miou_at_best=0.66, final_test_miou=0.65, best_test_miou=0.67, **test)
    rec(tmp_path, "camvid/deeplabv3_resnet18/afdcd", "afdcd", s, 0, 0.62, best=0.63, published=69.27, bench="camvid",
        test_miou_at_best=0.68, final_test_miou=0.675, best_test_miou=0.695, **test)
    t = summary(records_frame(tmp_path)).set_index("method")
    assert t.loc["baseline", "best_mean"] == pytest.approx(66.0) and t.loc["baseline", "final_mean"] == pytest.approx(65.0)
    assert t.loc["afdcd", "delta_best"] == pytest.approx(2.0) and t.loc["afdcd", "best_on_test"] == pytest.approx(69.5)
    assert t.loc["baseline", "diff_published"] == pytest.approx(66.0 - 66.92)  # published baseline: selected on val
    assert t.loc["afdcd", "diff_published"] == pytest.approx(69.5 - 69.27)  # published Af-DCD: selected on test
    assert (t["split"] == "test").all()


def test_ablations_are_shown_against_their_main_recipe(tmp_path, capsys):
    s = "deeplabv3-resnet18_deepstem"
    rec(tmp_path, "cityscapes/deeplabv3_resnet18/baseline", "baseline", s, 0, 0.70)
    rec(tmp_path, "cityscapes/deeplabv3_resnet18/afdcd", "afdcd", s, 0, 0.76, published=77.03)
    rec(tmp_path, "cityscapes/deeplabv3_resnet18/ablations/fd_only", "afdcd", s, 0, 0.73)
    t = summary(records_frame(tmp_path)).set_index("method")
    assert t.loc["afdcd (fd_only)", "vs_main"] == pytest.approx(-3.0) and t.loc["afdcd (fd_only)", "delta_best"] == pytest.approx(3.0)
    assert math.isnan(t.loc["afdcd", "vs_main"]) and math.isnan(t.loc["afdcd (fd_only)", "published"])
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs main" in out and "afdcd (spatial)" in out  # ablations not run yet show as missing


def test_published_numbers_stand_only_beside_runs_of_the_published_schedule(tmp_path):
    from afdcd_bench.engine.records import record_path, write_record
    from afdcd_bench.config import load_recipe, to_dict
    from afdcd_bench.harness.table import published_schedule

    def record(folder, overrides):
        cfg = load_recipe("cityscapes/deeplabv3_resnet18/afdcd", ["train.seed=0", *overrides])
        rec = {"kind": "afdcd-bench-run", "recipe": cfg.name, "benchmark": cfg.benchmark, "method": cfg.method.name,
               "student": "deeplabv3-resnet18_deepstem", "seed": 0, "config": to_dict(cfg), "final_miou": 0.7, "best_miou": 0.7,
               "wall_seconds": 1.0, "history": [{"step": 1, "miou": 0.7}], "published_miou": cfg.published.miou, "inputs": {}, "num_processes": 1,
               "per_device_batch": cfg.train.effective_batch, "grad_accumulation": 1}
        write_record(record_path(folder, cfg.name, 0), rec)
        return rec

    assert published_schedule(record(tmp_path / "full", []))
    assert not published_schedule(record(tmp_path / "smoke", ["train.iterations=20", "train.effective_batch=2"]))
    full = summary(records_frame(tmp_path / "full"))
    smoke = summary(records_frame(tmp_path / "smoke"))
    assert full.iloc[0]["published"] == 77.03 and full.iloc[0]["diff_published"] == pytest.approx(70 - 77.03)
    assert pd.isna(smoke.iloc[0]["published"]) and pd.isna(smoke.iloc[0]["diff_published"])


def test_a_method_has_one_colour_whatever_else_a_figure_holds():
    from afdcd_bench.harness.plots import _colour_of

    assert _colour_of("kd", ["kd"]) == _colour_of("kd", ["baseline", "cwd+kd", "kd"]) == _colour_of("kd")
    assert _colour_of("maskd (maskd_authors_schedule)") != _colour_of("maskd")  # a variant is told apart from its method
    assert _colour_of("some_new_method") == _colour_of("some_new_method", ["a", "b"])


def test_the_qualitative_key_names_each_drawn_class_in_its_palette_colour():
    import numpy as np

    from afdcd_bench.engine.predictions import palette
    from afdcd_bench.harness.qualitative import _row_label, class_key

    pal = palette("cityscapes")
    key = class_key("cityscapes", [0, 11, 18], pal)
    assert [p.get_label() for p in key] == ["road", "person", "bicycle"]
    assert np.allclose(key[1].get_facecolor()[:3], pal[11] / 255.0)
    assert _row_label("frankfurt_000000_000294_leftImg8bit") == "frankfurt_000000_000294"
    assert _row_label("a_very_long_image_name_of_forty_chars_x") == "...name_of_forty_chars_x"


def test_a_test_server_number_is_marked_and_never_compared_with_a_val_measurement(tmp_path):
    """CIRKDv2's Cityscapes numbers are test-server ones: shown with their mark and a note, and no
    best-pub beside a val measurement; a val number beside them is compared as before."""
    from rich.console import Console

    from afdcd_bench.harness.table import render

    rec(tmp_path, "cityscapes/segformer_mitb0/baseline", "baseline", "segformer-mit_b0", 0, 0.75, published=74.12)
    rec(tmp_path, "cityscapes/deeplabv3_resnet18/baseline", "baseline", "deeplabv3-resnet18_deepstem", 0, 0.74, published=74.21)
    t = summary(records_frame(tmp_path), expected_runs(["cityscapes/segformer_mitb0/kd", "cityscapes/segformer_mitb4/teacher"]))
    seg = t[t.student == "segformer-mit_b0"].set_index("method")
    assert seg.loc["baseline", "published"] == 74.12 and seg.loc["baseline", "published_split"] == "test-server"
    assert math.isnan(seg.loc["baseline", "diff_published"])
    r18 = t[t.student == "deeplabv3-resnet18_deepstem"].set_index("method")
    assert r18.loc["baseline", "diff_published"] == pytest.approx(74.0 - 74.21)
    teacher = t[t.student == "segformer-mit_b4"].iloc[0]  # not run yet: its number still carries the mark
    assert teacher.n == 0 and teacher.published_split == "test-server"
    console = Console(record=True, width=300)
    render(t, console)
    text = console.export_text()
    assert "74.12†" in text and "80.38†" in text and "74.21†" not in text
    assert "marked † are on Cityscapes' test server (1525 test images), not on the val split measured here" in " ".join(text.split())


def test_table_lists_the_missing_runs_of_every_protocol_some_record_is_in(tmp_path, capsys):
    """A results folder with a 2025 run: `table` lists that table's other runs as missing too (and the
    2023 one's, as before), never its runs as present."""
    rec(tmp_path, "cityscapes/segformer_mitb0/baseline", "baseline", "segformer-mit_b0", 0, 0.75, published=74.12)
    assert main(["table", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "cityscapes, segformer-mit_b0" in out and "cityscapes, deeplabv3-resnet18_deepstem" in out
    assert "cityscapes, segformer-mit_b4" in out  # its teacher, not run: missing
    rows = pd.read_csv(tmp_path / "out" / "table.csv")
    seg = rows[rows.student == "segformer-mit_b0"].set_index("method")
    assert seg.loc["baseline", "n"] == 1 and seg.loc["kd", "n"] == 0 and seg.loc["baseline", "published_split"] == "test-server"
