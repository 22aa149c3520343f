"""A reproduction as a graph of runs: the teacher, the stages learnt on it (MasKD's tokens), then the
students, each seed a run with its resources. Every executor runs the same plan (docs/scale.md)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import budget_slug, is_teacher_recipe, load_recipe
from ..config.runs import run_dir
from ..engine.identity import launch, planned_identity
from ..engine.records import record_path
from ..files import atomic_write
from ..methods import needs_teacher, stage_of


@dataclass(frozen=True)
class Resources:
    """Per run: processes on each node, GPUs on each node (0: CPU), nodes; threads per process on CPU."""

    processes: int = 1
    gpus: int = 0
    nodes: int = 1
    threads: int | None = None

    def total_processes(self) -> int:
        return self.processes * self.nodes


@dataclass
class PlannedRun:
    recipe: str
    seed: int
    overrides: list[str]
    needs: list[str]  # keys of the runs whose outputs this one reads
    resources: Resources
    name: str = ""  # the config's name (a recipe path's name)
    record: str = ""
    run_dir: str = ""
    effective_batch: int = 0
    iterations: int = 0
    budget: str = ""  # config/runs.py budget_slug() ("" for the recipe's own iterations)
    identity: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return f"{self.recipe}{'@' + self.budget if self.budget else ''}@seed{self.seed}"

    def train_args(self, results_dir: Path) -> list[str]:
        """`afdcd-bench train` arguments of this run (the same for every executor)."""
        return ["train", self.recipe, "--results-dir", str(results_dir), *self.overrides]


@dataclass
class Plan:
    benchmark: str
    results_dir: Path
    runs: list[PlannedRun]
    given_teacher: str | None = None

    def by_key(self) -> dict[str, PlannedRun]:
        return {r.key: r for r in self.runs}

    def save(self) -> Path:
        """plan.json in the results folder: what `status` reads (with the executor's jobs.json)."""
        body = {"benchmark": self.benchmark, "given_teacher": self.given_teacher,
                "runs": [{k: v for k, v in asdict(r).items() if k != "identity"} for r in self.runs]}
        return atomic_write(self.results_dir / "plan.json", lambda tmp: Path(tmp).write_text(json.dumps(body, indent=2)))


def load_plan(results_dir: Path) -> Plan:
    path = Path(results_dir) / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `reproduce` writes it when it starts; is {results_dir} a reproduction's results folder?")
    try:
        body = json.loads(path.read_text())
        runs = [PlannedRun(**{**r, "resources": Resources(**r["resources"])}) for r in body["runs"]]
        return Plan(body["benchmark"], Path(results_dir), runs, body.get("given_teacher"))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not JSON, or JSON of another shape
        raise ValueError(f"{path} is not a plan written by `reproduce` ({type(exc).__name__}: {exc}): rerun the reproduce "
                         "command to write it again") from None


def build_runs(names: list[str], seeds: int, common: list[str], quick_overrides: dict[str, list[str]], teacher: str | None,
               resources: Resources, results_dir: Path, budgets: dict[str, list[str]] | None = None) -> list[PlannedRun]:
    """One run per recipe and seed (one for the teacher and the stages: every seed's students share
    them), each needing the teacher run and the stage runs whose outputs it reads. budgets: a student
    recipe named there also runs under those overrides (harness/budget.py), beside its own schedule."""
    runs: list[PlannedRun] = []
    teacher_keys: dict[str, str] = {}  # by teacher recipe: a benchmark may have several (2023's R101, 2025's SegFormer-B4)
    stage_keys: dict[str, str] = {}
    for name in names:
        is_teacher = is_teacher_recipe(name)
        if is_teacher and teacher:
            continue
        base = load_recipe(name, [*common, *quick_overrides.get(name, [])])
        once = is_teacher or stage_of(base.method.name)
        variants = [[], (budgets or {})[name]] if name in (budgets or {}) and not once else [[]]
        for seed, variant in [(seed, v) for v in variants for seed in ([0] if once else range(seeds))]:
            overrides = [*common, *quick_overrides.get(name, []), *variant, f"train.seed={seed}"]
            if teacher and not is_teacher:
                overrides.append(f"teacher.checkpoint={Path(teacher).resolve()}")
            cfg = load_recipe(name, overrides)
            needs: list[str] = []
            if not is_teacher and needs_teacher(cfg.method.name) and teacher_keys:
                own = teacher_keys.get(cfg.teacher.recipe) if cfg.teacher is not None else None
                if own is None and len(teacher_keys) == 1:  # the plan's one teacher, whatever the recipe calls it
                    own = next(iter(teacher_keys.values()))
                if own is not None:
                    needs.append(own)
            for component in cfg.method.components:
                stage = getattr(cfg.method.options.get(component), "stage_recipe", None)
                if stage and stage in stage_keys:
                    needs.append(stage_keys[stage])
            procs = resources.total_processes()
            run = PlannedRun(name, seed, overrides, needs, resources, name=cfg.name,
                             record=str(record_path(results_dir, cfg.name, seed, budget_slug(cfg.budget))),
                             run_dir=str(run_dir(cfg.output_dir, cfg.name, seed, budget_slug(cfg.budget))), effective_batch=cfg.train.effective_batch,
                             iterations=cfg.train.iterations, budget=budget_slug(cfg.budget),
                             identity=planned_identity(cfg, launch(procs, cfg.train.effective_batch // procs, 1)))
            if cfg.train.effective_batch % procs:
                raise ValueError(f"{name}: effective batch {cfg.train.effective_batch} does not split over {procs} processes")
            runs.append(run)
            if is_teacher:
                teacher_keys[name] = run.key
            elif once:
                stage_keys[name] = run.key
    return runs


def _records_rates(folder: Path) -> dict[str, tuple[float, str]]:
    out: dict[str, tuple[float, str]] = {}
    for path in sorted(Path(folder).glob("*__seed*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("kind") != "afdcd-bench-run" or not rec.get("train_seconds"):
            continue
        steps = rec["config"]["train"]["iterations"]
        out.setdefault(rec["recipe"], (rec["train_seconds"] / steps / rec["config"]["train"]["effective_batch"], f"record {path.name}"))
    return out


def _bench_rates(path: Path) -> dict[str, tuple[float, str]]:
    """bench_step output: one result, or gpu_check's {"steps": {recipe: result}}."""
    body = json.loads(path.read_text())
    results = body.get("steps", {}).values() if isinstance(body.get("steps"), dict) else [body]
    return {r["recipe"]: (r["total_ms"] / 1000 / r["batch"], f"{path.name} ({r.get('device', '?')})")
            for r in results if isinstance(r, dict) and r.get("total_ms") and r.get("batch")}


def step_rates(results_dir: Path, sources: list[str]) -> dict[str, tuple[float, str]]:
    """Seconds per training image by recipe name, with where the figure comes from: records already in
    the results folder, then the given files (records' folders or bench_step JSON)."""
    rates = _records_rates(results_dir) if Path(results_dir).is_dir() else {}
    for src in sources:
        p = Path(src)
        found = _records_rates(p) if p.is_dir() else _bench_rates(p)
        for k, v in found.items():
            rates.setdefault(k, v)
    return rates


def projected_hours(run: PlannedRun, rates: dict[str, tuple[float, str]], method: str | None = None) -> tuple[float | None, str]:
    """Training hours of a run from a measured rate, divided over its processes as if they scaled
    perfectly; evaluation, data start-up and waiting in a queue are left out (docs/scale.md). Without
    a rate of its own recipe, a measured recipe of the same benchmark and method stands in, named
    as a proxy (another student network trains at another rate: a rough figure)."""
    if run.name in rates:
        per_image, source = rates[run.name]
    else:
        bench = run.name.split("/", 1)[0]
        proxy = next((k for k in sorted(rates) if method and k.startswith(bench + "/") and k.rsplit("/", 1)[-1] == method), None)
        if proxy is None:
            return None, "no measured rate"
        per_image, source = rates[proxy][0], f"proxy: {proxy}"
    return per_image * run.effective_batch * run.iterations / run.resources.total_processes() / 3600, source


def projected_wall(runs: list[PlannedRun], hours: dict[str, float], gpus: int) -> float:
    """Wall hours of the plan on `gpus` GPUs as the local executor runs it: whenever a GPU slice is
    free, the first run in plan order whose dependencies have ended starts there; a run without a
    rate takes no time."""
    per_run = max(1, runs[0].resources.gpus * runs[0].resources.nodes) if runs else 1
    slots = max(1, gpus // per_run)
    now, ends = 0.0, {}
    pending, running = list(runs), []
    while pending or running:
        for run in list(pending):
            if len(running) >= slots:
                break
            if all(ends.get(n, float("inf")) <= now for n in run.needs):
                running.append((now + hours.get(run.key, 0.0), run.key))
                pending.remove(run)
        if not running:  # what is left needs a run outside the plan
            break
        running.sort()
        end, key = running.pop(0)
        ends[key] = now = end
    return max(ends.values(), default=0.0)


def has_record(run: PlannedRun) -> bool:
    """A valid record of the run is where the plan puts it (the dry run's view: reproduce checks more)."""
    from ..engine.records import RecordError, read_record

    try:
        return Path(run.record).is_file() and bool(read_record(Path(run.record)))
    except RecordError:
        return False


def show_plan(plan: Plan, rates: dict[str, tuple[float, str]], console: Any) -> None:
    """`reproduce --dry-run`: each run, what it waits for, its resources and projected hours."""
    from rich.table import Table

    t = Table(title=f"{plan.benchmark}: {len(plan.runs)} run(s) planned into {plan.results_dir}")
    for col in ("run", "needs", "nodes", "processes", "GPUs", "steps", "hours", "rate from"):
        t.add_column(col, justify="right" if col in ("nodes", "processes", "GPUs", "steps", "hours") else "left", overflow="fold")
    hours: dict[str, float] = {}
    recorded = 0
    for run in plan.runs:
        h, source = projected_hours(run, rates, run.name.rsplit("/", 1)[-1])
        if has_record(run):  # a rerun skips it: nothing left to train
            h, source = 0.0, f"recorded: {Path(run.record).name}"
            recorded += 1
        if h is not None:
            hours[run.key] = h
        res = run.resources
        t.add_row(run.key, ", ".join(run.needs) or "-", str(res.nodes), str(res.total_processes()), str(res.gpus * res.nodes),
                  str(run.iterations), f"{h:.2f}" if h is not None else "?", source)
    console.print(t)
    if recorded:
        console.print(f"{recorded} of the {len(plan.runs)} run(s) have a record already (0 hours: running the command skips them)")
    unknown = len(plan.runs) - len(hours)
    per_run = max(1, plan.runs[0].resources.gpus * plan.runs[0].resources.nodes) if plan.runs else 1
    walls = ", ".join(f"{g} GPU(s) {projected_wall(plan.runs, hours, g):.1f} h" for g in (per_run, 8, 64) if g >= per_run)
    console.print(f"training hours of the {len(hours)} run(s) with a rate: {sum(hours.values()):.1f}; wall time, runs started as "
                  f"GPUs free up: {walls}"
                  f"{f'; {unknown} run(s) without a rate counted as 0 (measure them with benchmarks/bench_step.py and pass --step-times)' if unknown else ''}. "
                  "Evaluation, start-up and queueing not included; nothing was started.", soft_wrap=True)
