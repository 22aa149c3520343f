"""Training budgets (docs/equal_compute.md): the iteration counts a budget gives, the costs it reads,
the records and run folders it keeps apart, and the tables and figure that compare budgets."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from afdcd_bench.config import budget_slug, load_recipe, run_dir, settings, to_dict
from afdcd_bench.config.schema import ConfigError
from afdcd_bench.engine.records import record_path, write_record
from afdcd_bench.harness.budget import (COSTS_KIND, Budget, BudgetError, budget_label, budget_overrides, read_costs,
                                        reference_recipe, scaled_interval)
from afdcd_bench.harness.table import budget_comparison, records_frame, render, summary, write_tables

NAMES = ["demo/baseline", "demo/kd", "demo/afdcd", "demo/ablations/fitnet_kd"]


def _students(extra=()):
    return {n: load_recipe(n, list(extra)) for n in NAMES}


def _costs(ms, batch=8, crop=(64, 64)):
    """A costs file as if measured here, with the threads the in-process runs of these tests get."""
    return {"kind": COSTS_KIND, "device": f"cpu ({torch.get_num_threads()} threads)", "recipes": {n: {"ms": v, "batch": batch, "crop": list(crop)} for n, v in ms.items()}}


def _parse(overrides):
    return {o.split("=", 1)[0]: json.loads(o.split("=", 1)[1]) if o.startswith("budget.") else o.split("=", 1)[1] for o in overrides}


def test_equal_compute_gives_each_recipe_the_references_cost_in_iterations():
    students = _students()
    costs = _costs({"demo/baseline": 100.0, "demo/kd": 150.0, "demo/afdcd": 240.0, "demo/ablations/fitnet_kd": 170.0})
    out = budget_overrides(students, Budget("compute", 1.0, "afdcd"), costs, processes=1)
    assert sorted(out) == sorted(NAMES)
    base = _parse(out["demo/baseline"])
    assert base["train.iterations"] == "240"  # 100 x 240 / 100
    assert base["train.val_interval"] == "48" and base["train.checkpoint_interval"] == "120"  # the same 5 validations, 2 checkpoints
    assert base["budget.kind"] == "compute" and base["budget.reference"] == "afdcd" and base["budget.scale"] == 1.0
    assert (base["budget.reference_iterations"], base["budget.reference_cost_ms"], base["budget.cost_ms"]) == (100, 240.0, 100.0)
    assert base["budget.recipe_iterations"] == 100 and base["budget.costs_device"] == f"cpu ({torch.get_num_threads()} threads)"
    assert _parse(out["demo/kd"])["train.iterations"] == "160"
    assert _parse(out["demo/afdcd"])["train.iterations"] == "100"  # the reference keeps its count
    assert _parse(out["demo/ablations/fitnet_kd"])["train.iterations"] == str(round(100 * 240 / 170))  # 141, rounded
    doubled = budget_overrides(students, Budget("compute", 2.0, "afdcd"), costs, processes=1)
    assert _parse(doubled["demo/kd"])["train.iterations"] == "320"
    # applied: the recipe loads, trains that count, and its settings carry the budget
    cfg = load_recipe("demo/kd", out["demo/kd"])
    assert cfg.train.iterations == 160 and cfg.budget.kind == "compute" and cfg.budget.cost_ms == 150.0
    assert settings(to_dict(cfg))["budget"]["reference"] == "afdcd"
    assert "budget" not in settings(to_dict(load_recipe("demo/kd")))  # the default budget: ids as before budgets


def test_schedule_scale_multiplies_every_recipe_and_equal_iterations_changes_nothing():
    students = _students()
    assert budget_overrides(students, Budget(), None, 1) == {}
    out = budget_overrides(students, Budget("iterations", 2.5), None, 1)
    kd = _parse(out["demo/kd"])
    assert (kd["train.iterations"], kd["train.val_interval"], kd["budget.kind"], kd["budget.scale"]) == ("250", "50", "iterations", 2.5)
    assert scaled_interval(800, 40000, 40000) == 800 and scaled_interval(800, 70000, 40000) == 1400 and scaled_interval(3, 1, 100) == 1
    # as many validations, the last at the last step, never one just before it (186 at a rounded 37: 37, ..., 185, 186)
    for new_iterations in range(100, 400):
        every = scaled_interval(20, new_iterations, 100)
        assert math.ceil(new_iterations / every) == 5 and 4 * every < new_iterations, new_iterations
    with pytest.raises(BudgetError, match="--schedule-scale must be > 0"):
        budget_overrides(students, Budget("iterations", 0.0), None, 1)


def test_costs_are_refused_when_missing_measured_at_another_shape_or_not_a_costs_file(tmp_path):
    students = _students()
    partial = _costs({"demo/baseline": 100.0, "demo/afdcd": 240.0})
    with pytest.raises(BudgetError, match=r"costs.json has no cost for demo/kd: measure it"):
        budget_overrides(students, Budget("compute", 1.0, "afdcd"), partial, 1, "costs.json")
    other = _costs({n: 100.0 for n in NAMES}, batch=4)
    with pytest.raises(BudgetError, match=r"measured demo/afdcd at batch 4, crop \[64, 64\]; its runs train at batch 8"):
        budget_overrides(students, Budget("compute", 1.0, "afdcd"), other, 1, "costs.json")
    two = budget_overrides(students, Budget("compute", 1.0, "afdcd"), _costs({n: 100.0 for n in NAMES}, batch=4), processes=2)
    assert _parse(two["demo/kd"])["train.iterations"] == "100"  # two processes: each trains batch 4
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(BudgetError, match="not JSON"):
        read_costs(bad)
    bad.write_text(json.dumps({"kind": "other"}))
    with pytest.raises(BudgetError, match="not a costs file"):
        read_costs(bad)
    bad.write_text(json.dumps({**_costs({"demo/kd": 0.0})}))
    with pytest.raises(BudgetError, match="demo/kd has no positive cost"):
        read_costs(bad)
    with pytest.raises(BudgetError, match="no such file"):
        read_costs(tmp_path / "absent.json")


def test_the_reference_is_found_per_student_network_by_file_name_or_method():
    students = _students()
    assert reference_recipe("demo/ablations/fitnet_kd", students, "afdcd") == "demo/afdcd"  # another folder, same student
    assert reference_recipe("demo/baseline", students, "fitnet_kd") == "demo/ablations/fitnet_kd"  # by file name
    with pytest.raises(BudgetError, match=r"--equal-compute cirkd: no recipe of that name or method trains demo/kd's student"):
        reference_recipe("demo/kd", students, "cirkd")


def test_budgeted_runs_have_their_own_folder_record_and_label():
    cfg = load_recipe("demo/kd", ["budget.kind=compute", "budget.reference=afdcd", "budget.reference_iterations=100",
                                  "budget.reference_cost_ms=2.0", "budget.cost_ms=1.0", "budget.recipe_iterations=100",
                                  "train.iterations=200"])
    slug = budget_slug(cfg.budget)
    assert slug == "compute-afdcd" and budget_slug(load_recipe("demo/kd").budget) == ""
    assert budget_slug({"kind": "iterations", "scale": 2.0}) == "x2" and budget_slug({"kind": "compute", "reference": "kd", "scale": 0.5}) == "compute-kd-x0.5"
    assert run_dir("runs", "demo/kd", 1, slug).as_posix() == "runs/demo/kd/compute-afdcd-seed1"
    assert record_path("res", "demo/kd", 1, slug).name == "demo__kd__compute-afdcd__seed1.json"
    assert run_dir("runs", "demo/kd", 1).as_posix() == "runs/demo/kd/seed1"
    assert budget_label(to_dict(cfg)["budget"]) == "equal compute (afdcd)"
    assert budget_label({"kind": "iterations", "scale": 2.0}) == "x2 iterations" and budget_label(None) == "x1 iterations"
    for bad, message in ((["budget.kind=wallclock"], "budget.kind must be one of iterations, compute"),
                         (["budget.scale=0"], "budget.scale must be > 0"),
                         (["budget.kind=compute"], "budget.kind compute needs budget.reference, budget.reference_iterations")):
        with pytest.raises(ConfigError, match=message):
            load_recipe("demo/kd", bad)


def _record(folder, recipe, seed, best, overrides=(), train_s=10.0):
    cfg = load_recipe(recipe, [f"train.seed={seed}", *overrides])
    return write_record(record_path(folder, recipe, seed, budget_slug(cfg.budget)), {
        "kind": "afdcd-bench-run", "recipe": recipe, "benchmark": cfg.benchmark, "method": cfg.method.name,
        "student": f"{cfg.student.arch}-{cfg.student.backbone}", "seed": seed, "config": to_dict(cfg),
        "final_miou": best, "best_miou": best, "wall_seconds": train_s + 1, "train_seconds": train_s,
        "history": [{"step": cfg.train.iterations, "miou": best}], "published_miou": None, "device": "cpu",
        "inputs": {}, "num_processes": 1, "per_device_batch": cfg.train.effective_batch, "grad_accumulation": 1,
    })


def test_tables_compare_budgets_side_by_side_with_deltas_against_the_same_budgets_baseline(tmp_path):
    costs = _costs({"demo/baseline": 100.0, "demo/kd": 150.0, "demo/afdcd": 240.0, "demo/ablations/fitnet_kd": 170.0})
    budget = budget_overrides(_students(), Budget("compute", 1.0, "afdcd"), costs, 1)
    for seed in (0, 1):
        _record(tmp_path, "demo/baseline", seed, 0.30 + seed / 100)
        _record(tmp_path, "demo/kd", seed, 0.32 + seed / 100)
        _record(tmp_path, "demo/baseline", seed, 0.36 + seed / 100, budget["demo/baseline"], train_s=24.0)
        _record(tmp_path, "demo/kd", seed, 0.35 + seed / 100, budget["demo/kd"], train_s=24.0)
    table = summary(records_frame(tmp_path)).set_index(["method", "budget"])
    assert math.isnan(table.loc[("kd", "equal compute (afdcd)"), "compute_vs_ref"])  # no reference run: nothing to compare
    assert table.loc[("kd", "x1 iterations"), "delta_best"] == pytest.approx(2.0)
    assert table.loc[("kd", "equal compute (afdcd)"), "delta_best"] == pytest.approx(-1.0)  # vs the baseline trained longer
    assert table.loc[("baseline", "equal compute (afdcd)"), "iterations"] == 240
    assert table.loc[("kd", "equal compute (afdcd)"), "n"] == 2 and table.loc[("kd", "equal compute (afdcd)"), "train_s"] == 24.0
    compared = budget_comparison(summary(records_frame(tmp_path)))
    assert list(compared.columns) == ["benchmark", "student", "method", "x1 iterations", "equal compute (afdcd)"]
    assert compared.set_index("method").loc["kd"].tolist()[-2:] == ["32.50 (+2.00) [100]", "35.50 (-1.00) [160]"]
    paths = write_tables(summary(records_frame(tmp_path)), tmp_path / "out")
    assert (tmp_path / "out/budgets.md") in paths and "equal compute (afdcd)" in (tmp_path / "out/budgets.md").read_text()
    single = tmp_path / "single"
    _record(single, "demo/kd", 0, 0.3)
    assert budget_comparison(summary(records_frame(single))).empty
    assert (tmp_path / "single_out/table.csv") in write_tables(summary(records_frame(single)), tmp_path / "single_out")
    assert not (tmp_path / "single_out/budgets.md").exists()


def test_equal_compute_rows_show_the_compute_they_achieved_and_flag_a_miss(tmp_path):
    """A noisy cost measurement gave the baseline 1.7x KD's training time under a label of equality
    (16.1 s against 9.4 s): the rows say what each run cost against the reference."""
    from rich.console import Console

    costs = _costs({"demo/baseline": 100.0, "demo/kd": 150.0, "demo/afdcd": 240.0, "demo/ablations/fitnet_kd": 170.0})
    budget = budget_overrides(_students(), Budget("compute", 1.0, "afdcd"), costs, 1)
    for seed in (0, 1):
        _record(tmp_path, "demo/afdcd", seed, 0.33, budget["demo/afdcd"], train_s=10.0)
        _record(tmp_path, "demo/baseline", seed, 0.36, budget["demo/baseline"], train_s=17.0)
        _record(tmp_path, "demo/kd", seed, 0.35, budget["demo/kd"], train_s=10.5)
        _record(tmp_path, "demo/kd", seed, 0.32)  # equal iterations: no reference to compare with
    table = summary(records_frame(tmp_path))
    ratios = table.set_index(["method", "budget"])["compute_vs_ref"]
    assert ratios[("baseline", "equal compute (afdcd)")] == pytest.approx(1.7)
    assert ratios[("kd", "equal compute (afdcd)")] == pytest.approx(1.05) and math.isnan(ratios[("kd", "x1 iterations")])
    cells = budget_comparison(table).set_index("method")["equal compute (afdcd)"]
    assert cells["baseline"].endswith("{x1.70 !}") and cells["kd"].endswith("{x1.05}")
    console = Console(record=True, width=250)
    render(table, console)
    text = console.export_text()
    assert "x1.70 !" in text and "more than 10% off" in text


def test_the_budget_figure_draws_each_method_through_its_budgets_and_marks_the_pareto_front(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from afdcd_bench.harness.plots import pareto_front, plot_results

    assert pareto_front([(1.0, 5.0), (2.0, 4.0), (2.0, 6.0), (3.0, 6.0), (0.5, 1.0)]) == [0, 2, 4]
    costs = _costs({n: 100.0 + 50 * i for i, n in enumerate(NAMES)})
    budget = budget_overrides(_students(), Budget("compute", 1.0, "afdcd"), costs, 1)
    # (train s, best): baseline 10 s 30, 20 s 33; KD 12 s 25 (beaten by the baseline's 10 s 30), 20 s 35 (beats 20 s 33)
    _record(tmp_path, "demo/baseline", 0, 0.30)
    _record(tmp_path, "demo/baseline", 0, 0.33, budget["demo/baseline"], train_s=20.0)
    _record(tmp_path, "demo/kd", 0, 0.25, train_s=12.0)
    _record(tmp_path, "demo/kd", 0, 0.35, budget["demo/kd"], train_s=20.0)
    drawn, lines = [], []
    scatter, plot = Axes.scatter, Axes.plot
    monkeypatch.setattr(Axes, "scatter", lambda self, x, y, *a, **k: (drawn.append((k.get("label"), list(zip(x, y)))),
                                                                       scatter(self, x, y, *a, **k))[1])
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: (lines.append((k.get("label"), list(zip(*a[:2])))),
                                                             plot(self, *a, **k))[1])
    paths = plot_results(tmp_path)
    assert any(p.name.endswith("__budgets_pareto.png") and p.stat().st_size > 0 for p in paths)
    front = dict(drawn)["Pareto front"]
    assert sorted(front) == [(10.0, 30.0), (20.0, 35.0)]  # circled: exactly the points nothing beats
    drawn_lines = {(label, tuple(sorted(points))) for label, points in lines if label}  # the curves' figure draws lines too
    assert ("baseline", ((10.0, 30.0), (20.0, 33.0))) in drawn_lines and ("kd", ((12.0, 25.0), (20.0, 35.0))) in drawn_lines


@pytest.mark.slow
def test_an_equal_compute_reproduction_trains_both_budgets_and_a_rerun_finds_them(tmp_path):
    from rich.console import Console

    from afdcd_bench.engine.records import read_record
    from afdcd_bench.harness.reproduce import ReproduceError, reproduce

    out, runs = tmp_path / "res", tmp_path / "runs"
    small = ["train.iterations=2", "train.val_interval=2", "train.checkpoint_interval=2", "data.crop_size=[32, 32]",
             "student.pretrained=false", "train.effective_batch=2", "eval.batch_size=100"]
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(_costs({"demo/baseline": 10.0, "demo/kd": 15.0, "demo/afdcd": 20.0}, batch=2, crop=(32, 32))))
    args = dict(seeds=1, methods=["kd"], results_dir=str(out), output_dir=str(runs), extra=small, equal_compute="afdcd",
                costs=str(costs))
    console = Console(record=True, width=200)
    reproduce("demo", console=console, **args)
    names = sorted(p.name for p in out.glob("*__seed*.json"))
    assert names == ["demo__afdcd__compute-afdcd__seed0.json", "demo__afdcd__seed0.json", "demo__baseline__compute-afdcd__seed0.json",
                     "demo__baseline__seed0.json", "demo__kd__compute-afdcd__seed0.json", "demo__kd__seed0.json",
                     "demo__teacher__seed0.json"]  # the reference (afdcd) joined the methods: its cost sets the budget
    base = read_record(out / "demo__baseline__compute-afdcd__seed0.json")
    assert base["config"]["train"]["iterations"] == 4 and base["config"]["budget"]["cost_ms"] == 10.0  # 2 x 20 / 10
    assert read_record(out / "demo__kd__compute-afdcd__seed0.json")["config"]["train"]["iterations"] == 3  # 2 x 20 / 15 = 2.67
    assert read_record(out / "demo__kd__seed0.json")["config"]["train"]["iterations"] == 2
    assert (runs / "demo/kd/compute-afdcd-seed0/best.safetensors").is_file() and (runs / "demo/kd/seed0/best.safetensors").is_file()
    assert "budgets side by side" in console.export_text() and (out / "budgets.md").is_file()
    again = Console(record=True, width=200)
    reproduce("demo", console=again, **args)
    assert again.export_text().count("skip demo/") == 7  # nothing trained twice
    costs.write_text(json.dumps(_costs({"demo/baseline": 5.0, "demo/kd": 15.0, "demo/afdcd": 20.0}, batch=2, crop=(32, 32))))
    with pytest.raises(ReproduceError, match=r"demo__baseline__compute-afdcd__seed0.json was written by a run with other settings "
                                             r"\(budget.cost_ms: 10.0 -> 5.0"):
        reproduce("demo", console=Console(file=open("/dev/null", "w")), **args)


def test_budget_flags_are_checked_before_anything_runs(tmp_path):
    from afdcd_bench.harness.reproduce import ReproduceError, reproduce

    with pytest.raises(ReproduceError, match="--costs gives the costs per step of an equal-compute reproduction"):
        reproduce("demo", costs="x.json", results_dir=str(tmp_path), dry_run=True)
    with pytest.raises(ReproduceError, match="--equal-compute with --executor slurm: the costs must come from the nodes"):
        reproduce("demo", equal_compute="afdcd", executor="slurm", results_dir=str(tmp_path), dry_run=True)
    for scale in (0, 0.001, 1e300, float("inf"), float("nan"), -1):  # once tracebacks or 1-step / 1e300-step plans
        with pytest.raises(ReproduceError, match=r"--schedule-scale .*: allowed from 0.05 to 20.0"):
            reproduce("demo", schedule_scale=scale, results_dir=str(tmp_path), dry_run=True)
    with pytest.raises(ReproduceError, match=r"--equal-compute bogus: the reference must be a method with a demo recipe; known: "):
        reproduce("demo", equal_compute="bogus", results_dir=str(tmp_path), dry_run=True)
    with pytest.raises(ReproduceError, match="--parallel must be at least 1, got 0"):
        reproduce("demo", parallel=0, executor="local", results_dir=str(tmp_path), dry_run=True)


def test_a_dry_run_measures_nothing_and_plans_both_budgets_from_given_costs(tmp_path):
    from rich.console import Console

    from afdcd_bench.harness.plan import load_plan
    from afdcd_bench.harness.reproduce import ReproduceError, reproduce

    with pytest.raises(ReproduceError, match=r"--dry-run starts nothing, and the costs of 3 recipe\(s\) are not measured yet"):
        reproduce("demo", methods=["kd"], equal_compute="afdcd", results_dir=str(tmp_path / "a"), dry_run=True,
                  console=Console(file=open("/dev/null", "w")))
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(_costs({"demo/baseline": 100.0, "demo/kd": 150.0, "demo/afdcd": 240.0})))
    console = Console(record=True, width=200)
    reproduce("demo", seeds=2, methods=["kd"], equal_compute="afdcd", costs=str(costs), results_dir=str(tmp_path / "b"),
              dry_run=True, console=console)
    runs = {r.key: r.iterations for r in load_plan(tmp_path / "b").runs} if (tmp_path / "b/plan.json").is_file() else None
    text = console.export_text()
    assert "demo/baseline@compute-afdcd@seed1" in text and "demo/kd@compute-afdcd@seed0" in text
    assert runs is None  # a dry run writes no plan


def test_costs_measured_on_a_loaded_machine_are_refused_and_say_their_spread(tmp_path, monkeypatch):
    """A real load (two busy processes) during the first of three interleaved rounds: the spread
    shows it, the costs file keeps it, and budgets are not made from it."""
    import subprocess
    import sys

    from afdcd_bench.config import load_recipe
    from afdcd_bench.harness import step_cost
    from afdcd_bench.harness.budget import BudgetError, measure_costs

    real_run, calls, hogs = step_cost.run, [], []
    hog = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"

    def loaded_first_round(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            hogs.extend(subprocess.Popen([sys.executable, "-c", hog]) for _ in range(2))
            import time

            time.sleep(0.5)
        try:
            return real_run(*args, **kwargs)
        finally:
            if len(calls) == 2:  # the first round ends with its second recipe
                for h in hogs:
                    h.kill()

    monkeypatch.setattr(step_cost, "run", loaded_first_round)
    # a loader worker: drawing batches overlaps the step then and is not timed (only the compute's rounds are)
    tiny = ["data.crop_size=[32, 32]", "student.backbone=resnet10t", "teacher.backbone=resnet10t", "train.effective_batch=2",
            "data.num_workers=1"]
    configs = {n: (load_recipe(n, tiny), tiny) for n in ("demo/baseline", "demo/kd")}
    try:
        costs = measure_costs(configs, 1, steps=4, warmup=1, threads=1, log=lambda s: None)
    finally:
        for h in hogs:
            h.kill()
    assert len(calls) == 6 and costs["device"] == "cpu (1 threads)" and costs["threads"] == 1 and costs["rounds"] == 3
    entry = max(costs["recipes"].values(), key=lambda e: e["spread"])
    assert len(entry["rounds_ms"]) == 3 and entry["min_ms"] <= entry["ms"] <= entry["max_ms"]
    assert entry["rounds_ms"][0] == max(entry["rounds_ms"]) and entry["spread"] > 0.15, entry
    students = {n: c for n, (c, _) in configs.items()}
    with pytest.raises(BudgetError, match=r"varied by \d+% between its rounds of measurement .*busy"):
        budget_overrides(students, Budget("compute", 1.0, "baseline"), costs, 1)


def test_costs_from_another_device_or_other_threads_are_refused(tmp_path):
    from afdcd_bench.harness.reproduce import ReproduceError, reproduce

    costs = _costs({"demo/baseline": 100.0, "demo/kd": 150.0, "demo/afdcd": 240.0})
    for device in ("NVIDIA H200", f"cpu ({torch.get_num_threads() + 1} threads)"):
        (tmp_path / "costs.json").write_text(json.dumps({**costs, "device": device}))
        with pytest.raises(ReproduceError, match=rf"was measured on {re.escape(device)}, but the runs train on cpu "
                                                 rf"\({torch.get_num_threads()} threads\)"):
            reproduce("demo", methods=["kd"], equal_compute="afdcd", costs=str(tmp_path / "costs.json"),
                      results_dir=str(tmp_path / "r"), dry_run=True)
