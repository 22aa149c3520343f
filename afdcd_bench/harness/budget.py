"""Training budgets of a reproduction (docs/equal_compute.md): equal iterations (the papers' protocol,
each recipe's own count), K x every recipe's count (`--schedule-scale K`), or equal compute
(`--equal-compute REF`: each student run gets REF's iterations x REF's cost per step / its own cost,
so every run costs what REF costs). A budget becomes recipe overrides: `train.iterations`, the
validation and checkpoint intervals scaled with it (the same number of validations), and `budget.*`,
which the record carries and which makes equal-iteration and equal-compute runs different runs.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import RecipeConfig, to_dict
from ..files import atomic_write

COSTS_KIND = "afdcd-bench-costs"


class BudgetError(ValueError):
    pass


@dataclass(frozen=True)
class Budget:
    kind: str = "iterations"  # iterations | compute
    scale: float = 1.0
    reference: str | None = None  # compute: a method or recipe file name, e.g. afdcd

    @property
    def is_default(self) -> bool:
        return self.kind == "iterations" and self.scale == 1.0


def budget_label(budget: dict[str, Any] | None) -> str:
    """How a table names a record's budget: "x1 iterations", "x2 iterations", "equal compute (afdcd)"."""
    b = budget or {}
    scale = float(b.get("scale") or 1.0)
    if b.get("kind") == "compute":
        return f"equal compute ({b.get('reference')})" + (f" x{scale:g}" if scale != 1.0 else "")
    return f"x{scale:g} iterations"


def scaled_interval(interval: int, new_iterations: int, old_iterations: int) -> int:
    """An interval of the old schedule stretched to the new one, so a run validates (or saves) as
    many times, the last at its last step. From the count, not the ratio: a rounded ratio can put an
    extra validation one step before the last (186 steps at 37: 37 ... 185, then 186)."""
    count = math.ceil(old_iterations / interval)  # the old schedule's, its last step included
    return max(1, math.ceil(new_iterations / count))


def reference_recipe(name: str, candidates: dict[str, RecipeConfig], reference: str) -> str:
    """The recipe of `name`'s student network (same benchmark, architecture and backbone) that
    `reference` names: by file name, else the main (non-ablation) recipe whose method it is."""
    def pair(c: RecipeConfig) -> tuple[str, str, str]:
        return c.benchmark, c.student.arch, c.student.backbone

    same = {n: c for n, c in candidates.items() if pair(c) == pair(candidates[name])}
    by_file = [n for n in same if n.rsplit("/", 1)[-1] == reference]
    by_method = [n for n, c in same.items() if c.ablation_of is None and c.method.name == reference]
    found = by_file or by_method
    if not found:
        raise BudgetError(f"--equal-compute {reference}: no recipe of that name or method trains {name}'s student "
                          f"({'-'.join(pair(candidates[name])[1:])}; its recipes: {', '.join(sorted(same))})")
    return sorted(found)[0]


def shape_of(cfg: RecipeConfig, processes: int) -> dict[str, Any]:
    """What a cost per step is measured at: the per-process batch and the crop."""
    return {"batch": cfg.train.effective_batch // processes, "crop": list(cfg.data.crop_size)}


def loading_ms(cfg: RecipeConfig, batch: int, steps: int, warmup: int) -> float:
    """Median milliseconds to draw one training batch from the recipe's own loader (real images,
    augmentation), timed only where loading is serial (data.num_workers 0): there it adds to every
    step whatever the method; with workers it overlaps the step and is left out."""
    import statistics
    import time

    from ..engine.building import training_data

    if cfg.data.num_workers > 0:
        return 0.0
    _, loader = training_data(cfg, None, batch, 1)
    batches, times = iter(loader), []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


MAX_COST_SPREAD = 0.15  # a recipe's round medians may differ by this share of their median; more: a busy machine


def device_label(device: str, threads: int | None) -> str:
    """Where costs are measured and runs train, as the costs file and the check compare it: the GPU's
    name, or the CPU with the threads each run's process uses."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({threads or torch.get_num_threads()} threads)"


def measure_costs(configs: dict[str, tuple[RecipeConfig, list[str]]], processes: int, steps: int = 10, warmup: int = 3,
                  device: str | None = None, log: Callable[[str], None] = print, threads: int | None = None,
                  rounds: int = 3) -> dict[str, Any]:
    """Milliseconds of a training step of each recipe on this machine's device with the threads its runs
    get, at the shape its runs train at: the compute (harness/step_cost.py: the recipe's networks, method
    and optimiser on synthetic batches of that shape) plus, where the loader runs serially, drawing the
    batch. The recipes are measured in `rounds` interleaved rounds (A B C, A B C, ...), so that a load
    that comes and goes shows as a spread between a recipe's rounds instead of favouring one recipe;
    the cost is the median of every timed step, and the spread is kept beside it."""
    import statistics

    import torch

    from .step_cost import run

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    before = torch.get_num_threads()
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        label = device_label(device, threads)
        steps_ms: dict[str, list[float]] = {n: [] for n in configs}
        round_ms: dict[str, list[float]] = {n: [] for n in configs}
        results: dict[str, dict[str, Any]] = {}
        for r in range(rounds):
            for name, (cfg, overrides) in configs.items():
                shape = shape_of(cfg, processes)
                result = run(name, overrides, device, shape["batch"], tuple(shape["crop"]), None, warmup if r == 0 else 1, steps)
                steps_ms[name] += result["totals_ms"]
                round_ms[name].append(statistics.median(result["totals_ms"]))
                results[name] = result
        out: dict[str, Any] = {}
        loading: dict[str, float] = {}  # one figure per data setting and batch: it does not depend on the method
        for name, (cfg, overrides) in configs.items():
            shape = shape_of(cfg, processes)
            key = json.dumps([to_dict(cfg)["data"], shape["batch"], cfg.train.seed], sort_keys=True)
            if key not in loading:
                loading[key] = loading_ms(cfg, shape["batch"], steps, warmup)
            compute = statistics.median(steps_ms[name])
            spread = (max(round_ms[name]) - min(round_ms[name])) / compute
            out[name] = {"ms": compute + loading[key], "compute_ms": compute, "loading_ms": loading[key], **shape,
                         "precision": results[name]["precision"], "rounds_ms": [round(v, 3) for v in round_ms[name]],
                         "min_ms": min(steps_ms[name]), "max_ms": max(steps_ms[name]), "spread": spread}
            noisy = f"; its rounds differ by {100 * spread:.0f}% (over {100 * MAX_COST_SPREAD:.0f}%: a busy machine?)" \
                if spread > MAX_COST_SPREAD else ""
            log(f"cost of a step of {name}: {compute + loading[key]:.1f} ms ({compute:.1f} compute + {loading[key]:.1f} loading; "
                f"batch {shape['batch']}, {label}, median of {rounds} x {steps} steps, rounds "
                f"{', '.join(f'{v:.1f}' for v in round_ms[name])} ms){noisy}")
    finally:
        torch.set_num_threads(before)
    return {"kind": COSTS_KIND, "device": label, "threads": threads if device == "cpu" else None, "steps": steps,
            "rounds": rounds, "warmup": warmup, "torch": torch.__version__, "max_spread": MAX_COST_SPREAD,
            "measured_at": datetime.datetime.now().isoformat(timespec="seconds"), "recipes": out}


def write_costs(costs: dict[str, Any], path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(costs, indent=2)))


def read_costs(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        body = json.loads(p.read_text())
    except FileNotFoundError:
        raise BudgetError(f"--costs {p}: no such file") from None
    except ValueError as exc:
        raise BudgetError(f"--costs {p}: not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("kind") != COSTS_KIND or not isinstance(body.get("recipes"), dict):
        raise BudgetError(f"--costs {p}: not a costs file (written by `afdcd-bench costs` or an equal-compute reproduction)")
    for name, entry in body["recipes"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("ms"), (int, float)) or not entry["ms"] > 0:
            raise BudgetError(f"--costs {p}: {name} has no positive cost in ms ({entry!r})")
    return body


def cost_of(costs: dict[str, Any], name: str, cfg: RecipeConfig, processes: int, source: str) -> float:
    """The measured cost of `name`, refused when missing or measured at another shape than its runs'."""
    entry = costs["recipes"].get(name)
    if entry is None:
        raise BudgetError(f"{source} has no cost for {name}: measure it (`afdcd-bench costs`), or delete {source} to measure all anew")
    want = shape_of(cfg, processes)
    got = {k: entry.get(k) for k in want}
    if got != want:
        raise BudgetError(f"{source} measured {name} at batch {got['batch']}, crop {got['crop']}; its runs train at batch "
                          f"{want['batch']}, crop {want['crop']}: measure it anew")
    spread = entry.get("spread")
    if spread is not None and spread > MAX_COST_SPREAD:
        raise BudgetError(f"{source}: the cost of {name} varied by {100 * spread:.0f}% between its rounds of measurement "
                          f"({entry.get('rounds_ms')} ms; at most {100 * MAX_COST_SPREAD:.0f}% is taken): the machine was busy "
                          "while it measured, and budgets from it would not be equal. Measure again on a quiet machine (delete "
                          f"{source}, or `afdcd-bench costs`)")
    return float(entry["ms"])


def check_device(costs: dict[str, Any], here: str, source: str) -> None:
    """Costs from another device (or the CPU at other threads) than the runs train on make no equal budgets."""
    if costs.get("device") != here:
        raise BudgetError(f"{source} was measured on {costs.get('device')}, but the runs train on {here}: costs of one "
                          "comparison come from the device and threads its runs use; measure them there (`afdcd-bench costs "
                          "BENCHMARK --threads N` for a CPU) or delete the file to measure anew")


def budget_overrides(students: dict[str, RecipeConfig], budget: Budget, costs: dict[str, Any] | None, processes: int,
                     source: str = "the costs") -> dict[str, list[str]]:
    """Per student recipe, the overrides that give it this budget ({} for equal iterations)."""
    if budget.is_default:
        return {}
    if budget.kind not in ("iterations", "compute"):
        raise BudgetError(f"unknown budget kind {budget.kind!r}")
    if not budget.scale > 0:
        raise BudgetError(f"--schedule-scale must be > 0, got {budget.scale}")
    out: dict[str, list[str]] = {}
    for name, cfg in students.items():
        own = cfg.train.iterations
        fields = {"kind": budget.kind, "scale": budget.scale, "recipe_iterations": own}
        if budget.kind == "compute":
            assert costs is not None and budget.reference
            ref = reference_recipe(name, students, budget.reference)
            ref_cfg = students[ref]
            ref_cost, cost = cost_of(costs, ref, ref_cfg, processes, source), cost_of(costs, name, cfg, processes, source)
            iterations = max(1, round(ref_cfg.train.iterations * budget.scale * ref_cost / cost))
            fields.update(reference=ref.rsplit("/", 1)[-1], reference_iterations=ref_cfg.train.iterations,
                          reference_cost_ms=round(ref_cost, 3), cost_ms=round(cost, 3), costs_device=costs.get("device"))
        else:
            iterations = max(1, round(own * budget.scale))
        out[name] = [f"train.iterations={iterations}",
                     f"train.val_interval={scaled_interval(cfg.train.val_interval, iterations, own)}",
                     f"train.checkpoint_interval={scaled_interval(cfg.train.checkpoint_interval, iterations, own)}",
                     *(f"budget.{k}={json.dumps(v)}" for k, v in fields.items())]
    return out
