"""`reproduce.sh BENCHMARK`: teacher, then baselines and distilled students, then the table.

Runs whose record already exists are skipped, so an interrupted reproduction continues
where it stopped (and each run itself resumes from its last checkpoint).
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ..config import is_teacher_recipe, list_recipes, load_recipe, project_root, recipes_root, settings_diff
from ..config.runs import DEFAULT_OUTPUT_DIR
from ..data import BENCHMARKS, DatasetLayoutError, build_dataset, describe, resolve_root
from ..engine.identity import file_sha256, record_identity
from ..engine.provenance import produced_files
from ..engine.run_folder import set_aside
from ..engine.records import RecordError, read_record
from ..methods import needs_teacher, stage_of
from .execution import EXECUTORS, NOT_STARTED, execute, make_executor, report_failures, resolve_resources, run_threads
from .executors import FAILED
from .budget import (Budget, BudgetError, budget_label, budget_overrides, check_device, device_label, measure_costs,
                     read_costs, write_costs)
from .plan import Plan, PlannedRun, Resources, build_runs, show_plan, step_rates
from .status import wait_for_jobs
from .released_scores import with_released
from .table import expected_runs, records_frame, render, summary, write_tables

class ReproduceError(RuntimeError):
    pass


# what an equal-compute comparison is about (docs/equal_compute.md): the canonical feature and logit +
# feature KD (ablation recipes of baseline and kd) and KT (on request in the demo), which
# `--equal-compute` runs without being asked
EQUAL_COMPUTE_EXTRAS = ("fitnet", "fitnet_kd", "kt")


SCHEDULE_SCALES = (0.05, 20.0)  # --schedule-scale's allowed range


PROTOCOLS = ("2023", "2025")


def protocols_of(protocol: str | None, only: str | None = None) -> tuple[str, ...]:
    """--protocol 2023 | 2025 | all; unset: the 2023 table, or every protocol where --only picks the students."""
    if protocol in (None, ""):
        return PROTOCOLS if only else ("2023",)
    if protocol == "all":
        return PROTOCOLS
    if protocol not in PROTOCOLS:
        raise ReproduceError(f"--protocol {protocol}: expected 2023, 2025 or all")
    return (protocol,)


def plan(benchmark: str, ablations: bool = False, methods: list[str] | None = None, also: tuple[str, ...] = (),
         protocols: tuple[str, ...] = ("2023",)) -> list[str]:
    """Recipe names in run order: the teacher first, then the stages learnt on the teacher alone
    (MasKD's tokens), then the baselines (every delta needs them),
    then the other students' recipes; recipes that are ablations of another (`ablation_of`) only
    when asked for, or when methods (or `also`) names their file. methods: keep only the student recipes of these
    methods (a method of its method.name, or the recipe's file name), baselines always. protocols: the
    tables whose recipes run (a recipe's `protocol`: 2023, Af-DCD's CNN students; 2025, CIRKDv2's)."""
    runnable = list_recipes(benchmark)
    if not runnable:
        raise ReproduceError(f"no recipes for {benchmark!r} under {recipes_root() / benchmark}")
    configs = {n: load_recipe(n) for n in runnable}
    every_teacher = [n for n in runnable if is_teacher_recipe(n)]
    every_stage = [n for n in runnable if stage_of(configs[n].method.name)]
    runnable = [n for n in runnable if configs[n].protocol in protocols]
    if ablations and not any(c.ablation_of for c in configs.values()):
        raise ReproduceError(f"{benchmark} has no ablation recipes (recipes with ablation_of)")
    # an ablation runs with --ablations, or when --methods names its file (fitnet_kd)
    named = {*(methods or []), *also}
    runnable = [n for n in runnable if ablations or configs[n].ablation_of is None or n.rsplit("/", 1)[-1] in named]
    if methods:
        def names(n: str) -> set[str]:  # its main method (the first of method.name) and its file name; a stage: its method's
            stage = stage_of(configs[n].method.name)
            main = stage or configs[n].method.components[0]
            if configs[n].on_request and not stage:  # a run on request answers to its own file name only
                return {n.rsplit("/", 1)[-1]}
            return {main, n.rsplit("/", 1)[-1]}

        known = {m for n in runnable for m in names(n)}
        unknown = sorted(set(methods) - known)
        if unknown:
            raise ReproduceError(f"--methods {','.join(unknown)}: no {benchmark} recipe runs it; known: {', '.join(sorted(known - {'teacher'}))}")
        picked = [n for n in runnable if not is_teacher_recipe(n) and configs[n].method.name != "baseline" and set(methods) & names(n)]
        nets = {(configs[n].student.arch, configs[n].student.backbone) for n in picked}

        def baseline_kept(n: str) -> bool:  # every baseline, but one run on request only where its network is picked
            net = (configs[n].student.arch, configs[n].student.backbone)
            return not configs[n].on_request or net in nets or n.rsplit("/", 1)[-1] in methods

        runnable = [n for n in runnable if is_teacher_recipe(n) or n in picked
                    or (configs[n].method.name == "baseline" and baseline_kept(n))]
    else:
        runnable = [n for n in runnable if not configs[n].on_request or n.rsplit("/", 1)[-1] in also]
    teachers = [n for n in runnable if is_teacher_recipe(n)]
    stages = [n for n in runnable if stage_of(configs[n].method.name)]  # on the teacher alone, before the students
    students = sorted((n for n in runnable if n not in teachers and n not in stages),
                      key=lambda n: (configs[n].ablation_of is not None, configs[n].method.name != "baseline", n))
    # a stage or teacher of another protocol that a planned student learns from (the 2025 CNN students'
    # teacher is the 2023 one, and so are the MasKD tokens learnt on it)
    used_stages = {getattr(configs[n].method.options.get(c), "stage_recipe", None) for n in students for c in configs[n].method.components}
    stages += [n for n in every_stage if n in used_stages and n not in stages]
    used = {configs[n].teacher.recipe for n in students + stages
            if configs[n].teacher is not None and needs_teacher(configs[n].method.name)}
    teachers += [n for n in every_teacher if n in used and n not in teachers]
    return needed_stages(teachers + stages + students, configs)


def only_these(benchmark: str, names: list[str], only: str, protocols: tuple[str, ...]) -> list[str]:
    """The planned names `--only` keeps: the students of the folder named `only` (deeplabv3_resnet18, not
    deeplabv3_resnet18_2025 beside it), else those whose name contains it; the baselines of their networks
    on their protocols (every delta needs one), the teachers and stages they read."""
    configs = {n: load_recipe(n) for n in names}
    net = {n: (c.student.arch, c.student.backbone) for n, c in configs.items()}
    students = [n for n in names if not is_teacher_recipe(n) and not stage_of(configs[n].method.name)]
    kept = [n for n in students if only in n.split("/")[:-1]] or [n for n in students if only in n]
    if not kept:
        raise ReproduceError(f"--only {only!r} matches no student recipe of {benchmark}: {plan(benchmark, protocols=protocols)}")
    nets = {(net[n], configs[n].protocol) for n in kept}
    baselines = [n for n in names if configs[n].method.name == "baseline" and (net[n], configs[n].protocol) in nets]
    teachers = {configs[n].teacher.recipe for n in [*kept, *baselines]  # theirs only
                if configs[n].teacher is not None and needs_teacher(configs[n].method.name)}
    return needed_stages([n for n in names if (is_teacher_recipe(n) and n in teachers) or stage_of(configs[n].method.name)
                          or n in kept or n in baselines], configs)


def needed_stages(names: list[str], configs: dict[str, Any] | None = None) -> list[str]:
    """names without the stage recipes that none of its student recipes builds on (configs: the
    recipes already loaded, by name; others are loaded here)."""
    configs = {n: (configs or {}).get(n) or load_recipe(n) for n in names}
    used = {getattr(cfg.method.options.get(c), "stage_recipe", None) for cfg in configs.values() for c in cfg.method.components}
    return [n for n in names if not stage_of(configs[n].method.name) or n in used]


def quick_schedule(benchmark: str, names: list[str]) -> dict[str, list[str]]:
    """Each recipe's overrides for `--quick` from recipes/<benchmark>/_quick.yaml: its own entry, else
    the file's "*" entry (every recipe of the benchmarks: a smoke schedule). A recipe with neither
    would train its full schedule inside a smoke run: refused, naming it."""
    path = recipes_root() / benchmark / "_quick.yaml"
    if not path.is_file():
        raise ReproduceError(f"--quick needs {path}")
    table = yaml.safe_load(path.read_text()) or {}
    out = {n: table.get(n, table.get("*")) for n in names}
    unlisted = [n for n, extra in out.items() if extra is None]
    if unlisted:
        raise ReproduceError(f"--quick: {path} has no overrides for {', '.join(unlisted)} (and no '*' entry)")
    return {n: list(extra) for n, extra in out.items()}


def check_data(benchmark: str, data_root: str | None) -> None:
    """data_root is the benchmark's own folder (default: $AFDCD_DATA/<folder>)."""
    if benchmark not in BENCHMARKS:
        return
    root = resolve_root(benchmark, data_root)
    try:
        build_dataset(benchmark, root, "train")
    except DatasetLayoutError as exc:
        raise ReproduceError(str(exc)) from None
    except FileNotFoundError as exc:
        raise ReproduceError(f"{benchmark}: {exc}\n{describe(benchmark, root)}") from None


def check_teacher(teacher: str, overrides: dict[str, list[str]]) -> None:
    """--teacher opened and matched against every planned student before anything runs."""
    from ..models import load_segmentor
    from ..models.weights import WeightsMismatch

    from ..engine.provenance import check_finite_weights, check_recorded

    try:
        check_recorded(Path(teacher).resolve(), "checkpoint")
        model = load_segmentor(Path(teacher).resolve())
        check_finite_weights(model.state_dict(), teacher, "checkpoint")
    except (FileNotFoundError, ValueError, WeightsMismatch) as exc:
        raise ReproduceError(f"--teacher {teacher}: {exc}") from None
    built = (model.build_args["arch"], model.build_args["backbone"], model.num_classes)
    for name, extra in overrides.items():
        cfg = load_recipe(name, extra)
        if is_teacher_recipe(name) or cfg.teacher is None or not needs_teacher(cfg.method.name):
            continue
        wanted = (cfg.teacher.arch, cfg.teacher.backbone, cfg.num_classes)
        if built != wanted:
            raise ReproduceError(f"--teacher {teacher} is a {built[0]}-{built[1]} for {built[2]} classes, but {name} distils from a "
                                 f"{wanted[0]}-{wanted[1]} for {wanted[2]} classes")


def check_weights(overrides: dict[str, list[str]]) -> list[str]:
    """Every pretrained backbone file the planned runs start from that is missing, each with the
    command that gets it (the teacher: check_teacher)."""
    from ..models.fetch import missing_weights_hint

    from ..config.runs import NAMED_WEIGHTS

    missing: dict[str, str] = {}
    for name, extra in overrides.items():
        p = load_recipe(name, extra).student.pretrained  # the teacher recipe's too: its backbone
        if isinstance(p, str) and p not in NAMED_WEIGHTS and not Path(p).is_file():
            missing.setdefault(p, name)
    return [f"weights file {p} (for {name}) is missing: {missing_weights_hint(p) or 'not a released file; give its path in the recipe'}"
            for p, name in sorted(missing.items())]


def check_recipes(overrides: list[tuple[str, list[str]]]) -> list[str]:
    """Every planned recipe loaded with its overrides (the checks of config/checks.py and of each
    method): all the refusals, not only the first."""
    from ..config.schema import ConfigError

    problems = []
    for name, extra in overrides:
        try:
            load_recipe(name, extra)
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            problems.append(f"{name}: {exc}")
    return list(dict.fromkeys(problems))


def preflight(problems: list[str]) -> None:
    if problems:
        raise ReproduceError(f"nothing was started: {len(problems)} problem(s) found before the first run\n" +
                             "\n".join(f"- {p}" for p in problems))


def _existing_record(path: Path, name: str, seed: int, cfg_identity: dict, console: Console) -> dict | None:
    """The valid record of this exact run, if one exists (the same settings, teacher and stage files by
    content, and launch: engine/identity.py). A damaged one is moved aside (never deleted) and the run
    goes again; one written under other settings stops the reproduction."""
    if not path.is_file():
        return None
    try:
        rec = read_record(path)
    except RecordError as exc:
        aside = path.with_name(f"{path.name}.damaged-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        path.rename(aside)
        console.log(f"{exc}; moved it to {aside} and running {name} seed {seed} again")
        return None
    diff = settings_diff(record_identity(rec), cfg_identity)
    if diff:
        raise ReproduceError(
            f"{path} was written by a run with other settings ({'; '.join(diff[:6])}): give this reproduction another "
            f"--results-dir (and --output-dir), or move that record away to run {name} seed {seed} again"
        )
    console.log(f"skip {name} seed {seed}: record {path} exists (written {rec.get('finished_at') or _mtime(path)})")
    return rec


def changed_outputs(record: dict) -> list[str]:
    """The files a finished run wrote that are no longer what its record holds (missing or another sha256)."""
    out = []
    for path, want in produced_files(record).items():
        got = file_sha256(path) if path.is_file() else None
        if got != want:
            out.append(f"{path} ({'missing' if got is None else f'sha256 {got}'}; its record holds {want})")
    return out


def redo(run: PlannedRun, why: str, console: Console) -> None:
    """Train a run of this reproduction again: its record and run folder moved aside, never deleted."""
    record = Path(run.record)
    moved = []
    if record.is_file():
        aside = record.with_name(f"{record.name}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        record.rename(aside)
        moved.append(str(aside))
    folder = set_aside(Path(run.run_dir))
    if folder is not None:
        moved.append(str(folder))
    console.log(f"{run.recipe} seed {run.seed} is trained again: {why}" + (f"; moved aside: {', '.join(moved)}" if moved else ""))


def skip_finished(the_plan: Plan, console: Console) -> tuple[set[str], list[str]]:
    """The keys of planned runs already done, and their names. A run whose output others read (the
    teacher, a stage) is trained again when that output changed since its record (and so is every run
    that reads it): reproduce owns those files, so it remakes them rather than refusing."""
    done, skipped, again = set(), [], set()
    consumed = {k for run in the_plan.runs for k in run.needs}
    for run in the_plan.runs:
        upstream = [k for k in run.needs if k in again]
        if upstream:
            if Path(run.record).is_file() or Path(run.run_dir).exists():
                redo(run, f"it reads {', '.join(upstream)}, which is trained again", console)
            again.add(run.key)
            continue
        rec = _existing_record(Path(run.record), run.recipe, run.seed, run.identity, console)
        changed = changed_outputs(rec) if rec is not None and run.key in consumed else []
        if changed:
            redo(run, f"what it wrote changed since its record: {'; '.join(changed)}", console)
            again.add(run.key)
        elif rec is not None:
            done.add(run.key)
            skipped.append(f"{run.recipe} seed {run.seed}")
    return done, skipped


def _mtime(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")


def output_folder(output_dir: str | None, extra: list[str], quick: bool) -> str | None:
    """The run folder's one home: --output-dir, else an output_dir= override, else the recipes' own
    (runs/ of the project; runs/quick for --quick, so a quick run never resumes into a full one)."""
    given = [o.split("=", 1)[1] for o in extra if o.split("=", 1)[0].strip() == "output_dir"]
    if output_dir is not None:
        return str(Path(output_dir).resolve())
    if given:
        return str(Path(given[-1]).resolve())
    return str(project_root() / DEFAULT_OUTPUT_DIR / "quick") if quick else None


def budget_runs(names: list[str], common: list[str], per_recipe: dict[str, list[str]], budget: Budget, costs: str | None,
                out: Path, processes: int, console: Console, dry_run: bool = False,
                runs_on: tuple[str, int | None] | None = None) -> dict[str, list[str]]:
    """Each student recipe's overrides for the budget (harness/budget.py); the plan runs them beside
    the recipe's own schedule, so one reproduction holds both sides of the comparison. The costs come
    from --costs, else from the results folder's costs.json, which an earlier start measured (so a rerun
    gives the same counts); recipes it lacks are measured now on this machine and added to it. runs_on:
    (device, threads) the runs train with here, which the costs must come from (None: elsewhere, SLURM)."""
    students = student_configs(names, common, per_recipe)
    measured = None
    source = out / "costs.json"
    device, threads = runs_on or (None, None)
    here = device_label(device, threads) if device else None
    try:
        if budget.kind == "compute":
            if costs:
                measured, source = read_costs(costs), Path(costs)
                if here:
                    check_device(measured, here, str(source))
            else:
                measured = read_costs(source) if source.is_file() else None
                if measured:
                    console.log(f"using the costs per step measured at {measured.get('measured_at')} on {measured.get('device')} "
                                f"({source}); delete that file to measure them anew")
                    if here:
                        check_device(measured, here, str(source))
                missing = {n: (c, [*common, *per_recipe.get(n, [])]) for n, c in students.items()
                           if n not in (measured or {}).get("recipes", {})}
                if missing and dry_run:
                    raise BudgetError(f"--dry-run starts nothing, and the costs of {len(missing)} recipe(s) are not measured yet "
                                      f"({', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''}): give --costs FILE "
                                      f"(`afdcd-bench costs BENCHMARK`) or start the reproduction, which measures them first")
                if missing:
                    console.log(f"measuring the cost of a training step of {len(missing)} recipe(s) on this machine")
                    new = measure_costs(missing, processes, device=device, threads=threads, log=console.log)
                    if measured:
                        check_device(measured, new["device"], str(source))
                    measured = {**new, "recipes": {**(measured or {}).get("recipes", {}), **new["recipes"]}}
                    write_costs(measured, source)
                    console.log(f"wrote {source}: a rerun of this reproduction uses these costs")
        extra = budget_overrides(students, budget, measured, processes, str(source))
    except BudgetError as exc:
        raise ReproduceError(str(exc)) from None
    for name, over in extra.items():
        console.log(f"{name}: {over[0].split('=', 1)[1]} iterations under {budget_label(_fields(over))}, "
                    f"{students[name].train.iterations} under its own schedule")
    return extra


def _runs_on(executor: str, resources: Resources, parallel: int) -> tuple[str, int | None] | None:
    """(device, threads per process) this reproduction's runs train with on this machine; None under SLURM."""
    if executor == "slurm":
        return None
    if resources.gpus:
        return "cuda", None
    return "cpu", run_threads(executor, resources, parallel)


def student_configs(names: list[str], common: list[str], per_recipe: dict[str, list[str]]) -> dict[str, Any]:
    """The student recipes among names, loaded with their overrides (the runs a budget applies to)."""
    return {n: load_recipe(n, [*common, *per_recipe.get(n, [])]) for n in names
            if not is_teacher_recipe(n) and not stage_of(load_recipe(n).method.name)}


def measure_benchmark_costs(benchmark: str, out: Path, methods: list[str] | None = None, ablations: bool = False,
                            quick: bool = False, extra: list[str] | None = None, processes: int = 1, steps: int = 10,
                            console: Console | None = None, threads: int | None = None,
                            protocols: tuple[str, ...] = ("2023",)) -> Path:
    """`afdcd-bench costs`: the costs per step of a reproduction's student recipes, measured on this
    machine, written as the JSON `reproduce --costs` reads (on a cluster: run it on a compute node)."""
    console = console or Console()
    names = plan(benchmark, ablations, methods, protocols=protocols)
    per_recipe = quick_schedule(benchmark, names) if quick else {}
    students = student_configs(names, list(extra or []), per_recipe)
    measured = measure_costs({n: (c, [*(extra or []), *per_recipe.get(n, [])]) for n, c in students.items()}, processes,
                             steps=steps, log=console.log, threads=threads)
    return write_costs(measured, out)


def _fields(overrides: list[str]) -> dict[str, Any]:
    return {o.split("=", 1)[0][len("budget."):]: yaml.safe_load(o.split("=", 1)[1]) for o in overrides if o.startswith("budget.")}


def reproduce(
    benchmark: str,
    seeds: int = 1,
    data_root: str | None = None,
    teacher: str | None = None,
    quick: bool = False,
    results_dir: str | None = None,
    output_dir: str | None = None,
    executor: str | None = None,
    extra: list[str] | None = None,
    console: Console | None = None,
    only: str | None = None,
    ablations: bool = False,
    methods: list[str] | None = None,
    resources: Resources | dict[str, int | None] | None = None,
    parallel: int = 1,
    dry_run: bool = False,
    step_times: list[str] | None = None,
    slurm: dict[str, Any] | None = None,
    wait: bool = False,
    equal_compute: str | None = None,
    schedule_scale: float = 1.0,
    costs: str | None = None,
    protocol: str | None = None,
) -> Path:
    """only: keep the teacher and the student recipes whose name contains this text; ablations: also
    run the recipes that vary a main recipe (`ablation_of`: variants and the paper's ablation axes).
    executor: inprocess (the demo's default), local (the benchmarks'), slurm (docs/scale.md)."""
    console = console or Console(width=max(Console().width, 150))
    if benchmark != "demo" and benchmark not in BENCHMARKS:
        raise ReproduceError(f"unknown benchmark {benchmark!r}; expected demo or one of {sorted(BENCHMARKS)}")
    if seeds < 1:
        raise ReproduceError(f"--seeds must be at least 1, got {seeds}")
    executor = executor or ("inprocess" if benchmark == "demo" else "local")
    if executor not in EXECUTORS:
        raise ReproduceError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    resources = resources if isinstance(resources, Resources) else resolve_resources(executor, **(resources or {}))
    if executor == "inprocess" and resources.total_processes() > 1:
        raise ReproduceError("--executor inprocess trains one process per run; several processes per run need --executor local or slurm")
    missing: list[str] = []  # a dry run plans anyway and says what a real start would stop on
    try:
        check_data(benchmark, data_root)
    except ReproduceError as exc:
        if not dry_run:
            raise
        missing.append(str(exc).splitlines()[0])
    low, high = SCHEDULE_SCALES
    if not low <= float(schedule_scale) <= high:  # inf and nan included
        raise ReproduceError(f"--schedule-scale {schedule_scale}: allowed from {low} to {high} (x{low} turns the demo's 100 "
                             "steps into 5; beyond these a run is no longer the recipe's schedule, scaled)")
    if parallel < 1:
        raise ReproduceError(f"--parallel must be at least 1, got {parallel}")
    budget = Budget("compute" if equal_compute else "iterations", float(schedule_scale), equal_compute)
    if equal_compute:
        try:
            plan(benchmark, ablations, [equal_compute])
        except ReproduceError as exc:
            raise ReproduceError(f"--equal-compute {equal_compute}: the reference must be a method with a {benchmark} recipe"
                                 f"; {str(exc).split('; ', 1)[-1]}") from None
    if costs and budget.kind != "compute":
        raise ReproduceError("--costs gives the costs per step of an equal-compute reproduction: it needs --equal-compute REF")
    if budget.kind == "compute" and executor == "slurm" and not costs:
        raise ReproduceError("--equal-compute with --executor slurm: the costs must come from the nodes the runs use; measure them "
                             "there (`afdcd-bench costs BENCHMARK --out costs.json` in a job) and give --costs costs.json")
    if methods and equal_compute and equal_compute not in methods:
        methods = [*methods, equal_compute]  # the reference's cost sets every run's budget
    protocols = protocols_of(protocol, only)
    names = plan(benchmark, ablations, methods, EQUAL_COMPUTE_EXTRAS if budget.kind == "compute" and not methods else (), protocols)
    if only:
        names = only_these(benchmark, names, only, protocols)
    quick_overrides: dict[str, list[str]] = {}
    if quick:
        quick_overrides = quick_schedule(benchmark, [n for n in names if not (teacher and is_teacher_recipe(n))])
        seeds = 1
    out = Path(results_dir).resolve() if results_dir else project_root() / "results" / f"{benchmark}{'-quick' if quick else ''}"
    if out.exists() and not out.is_dir():
        raise ReproduceError(f"--results-dir {out} is a file; give a folder for the records and tables")
    extra = list(extra or [])
    runs = output_folder(output_dir, extra, quick)
    rest = [o for o in extra if o.split("=", 1)[0].strip() != "output_dir"]
    common = [*([f"output_dir={runs}"] if runs else []), *rest]
    if data_root:
        common.append(f"data.root={Path(data_root).resolve()}")
    base = [(n, [*common, *quick_overrides.get(n, [])]) for n in names if not (teacher and is_teacher_recipe(n))]
    problems = check_recipes(base)
    if not problems:
        weights = check_weights(dict(base))
        problems += [] if dry_run else weights
        missing += weights if dry_run else []
    preflight(problems)
    budgets = {} if budget.is_default else \
        budget_runs(names, common, quick_overrides, budget, costs, out, resources.total_processes(), console, dry_run,
                    runs_on=_runs_on(executor, resources, parallel))
    planned = [(n, [*extra, *variant]) for n, extra in base for variant in ([[], budgets[n]] if n in budgets else [[]])]
    preflight(check_recipes([(n, extra) for n, extra in planned if n in budgets and extra != dict(base)[n]]))
    if teacher:
        check_teacher(teacher, {n: [*common, *quick_overrides.get(n, [])] for n in names})
    try:
        the_plan = Plan(benchmark, out, build_runs(names, seeds, common, quick_overrides, teacher, resources, out, budgets),
                        teacher)
    except ValueError as exc:
        raise ReproduceError(str(exc)) from None
    if teacher:
        console.log(f"using the given teacher {teacher}; the teacher recipe is not trained")
    if dry_run:
        for line in missing:
            console.print(f"[yellow]a start would stop here: {line}[/yellow]", soft_wrap=True)
        show_plan(the_plan, step_rates(out, step_times or [str(p) for p in sorted((project_root() / "results" / "gpu").glob("*.json"))]),
                  console)
        return out
    done, skipped = skip_finished(the_plan, console)
    if executor == "slurm":
        from .slurm import cancel_stranded

        cancel_stranded(out, {r.key for r in the_plan.runs if r.key not in done}, console.log)
    the_plan.save()
    runner = make_executor(executor, out, resources, parallel, slurm or {})
    handles = execute(the_plan, runner, done, console)
    if executor == "slurm":
        if not wait:
            console.print(f"submitted {len(handles)} job(s); `afdcd-bench status {out}` follows them, and "
                          f"`afdcd-bench table {out}` gathers their records once they ended", soft_wrap=True)
            return out
        for s in wait_for_jobs(out, console):
            if s.key in handles and s.state != "done":
                handles[s.key].state, handles[s.key].detail = FAILED if s.state == "failed" else NOT_STARTED, s.detail
    table = with_released(summary(records_frame(out), expected_runs(planned, with_settings=True, processes=resources.total_processes())),
                          out)
    render(table, console)
    for p in write_tables(table, out):
        console.log(f"wrote {p}")
    if skipped:
        console.print(f"[yellow]{len(skipped)} run(s) in this table were not trained by this command: their records were already in "
                      f"{out} ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''}). To measure anew, give another "
                      f"--results-dir (and --output-dir), or move those records away.[/yellow]", soft_wrap=True)
    reference = project_root() / "results" / "reference" / out.name / "table.md"
    if reference.is_file() and reference.parent.resolve() != out:
        console.print(f"This code's committed measurement of the same reproduction, for comparison: {reference}", soft_wrap=True)
    report_failures(the_plan, handles)
    return out
