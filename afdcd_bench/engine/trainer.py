"""The one training loop: every method, every launch (1 CPU .. multi-node), through Accelerate."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import DistributedType, GradientAccumulationPlugin
from accelerate.utils import set_seed
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from ..config import RecipeConfig, project_root, run_dir as run_folder, settings, to_dict
from ..config.runs import recorded_path
from ..data import build_dataset, resolve_root
from ..losses import IGNORE_INDEX
from ..methods import BuildContext, OwnPartsState, RunStates, build_method, needs_teacher, stage_of
from ..models import Segmentor, SegmentorOutput, build_segmentor, load_segmentor, save_segmentor
from .checkpointing import RunTimes, latest_state, load_training_state
from .evaluate import evaluate
from .full_weights import FullWeights
from .identity import file_sha256, identity, input_files, launch
from .pretrain import DIGITS, digits_pretrained
from .progress import Heartbeat, make_progress
from .run_folder import RunFolderError, RunLock, check_record_slot, check_resumable, check_writable, read_progress, set_aside
from .records import record_path, run_facts, write_record
from .schedule import poly_lr
from .stepping import backward_and_step, check_deepspeed_clip, check_own_parts, disable_global_clip
from .stopping import StopRequests, stop_if_requested


class TrainingDiverged(RuntimeError):
    pass


class LaunchMismatch(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says from which step the same command resumes."""


def resumed_batches(accelerator: Accelerator, dataset: Any, loader: Any, micro: int) -> Iterator[Any]:
    """The loader's batches from micro-batch `micro` on, epoch after epoch: each epoch's shuffle and
    augmentation seeded by its number, so a resumed run skips exactly what it had consumed."""
    while True:
        epoch, skip = divmod(micro, len(loader))
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        for batch in (accelerator.skip_first_batches(loader, skip) if skip else loader):
            micro += 1
            yield batch


def check_finite(accelerator: Accelerator, loss: torch.Tensor, terms: dict[str, torch.Tensor], name: str, step: int,
                 run_dir: Path) -> None:
    """Stop every process, before any update, when the loss of any one is not finite (one process
    raising alone would leave the others waiting at the next collective)."""
    finite = torch.isfinite(loss.detach()).float()
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="min")
    if finite.item() < 1:
        raise TrainingDiverged(
            f"{name}: loss became {loss.detach().item()} at step {step} ({ {k: float(v.detach()) for k, v in terms.items()} }); "
            f"stopped without saving. The last good checkpoint in {run_dir / 'state'} is intact."
        )


def interrupted(name: str, step: int, saved_step: int) -> TrainingInterrupted:
    again = f"rerun the same command to resume from step {saved_step}" if saved_step else "nothing was saved yet; rerun the same command to start again"
    return TrainingInterrupted(f"{name} interrupted at step {step}; {again}")


@dataclass
class TrainHooks:
    """Points where a caller (tests, a sweep) may step into the loop without patching it."""

    adapt_student: Callable[[nn.Module], nn.Module] | None = None  # right after the student is built
    after_checkpoint: Callable[[int], None] | None = None  # after each saved training state (the step)
    before_update: Callable[[int], None] | None = None  # before each backward and optimiser step (micro-batch count)


class DistillStep(nn.Module):
    """Student + method in one module, so one DDP/DeepSpeed wrapper covers all trained weights."""

    def __init__(self, student: Segmentor, method: nn.Module):
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, images: torch.Tensor, labels: torch.Tensor, teacher_out: Any) -> dict[str, torch.Tensor]:
        return self.method(self.student(images), teacher_out, labels)


def differentiable_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes whose backward sends each process its share of the gradient."""
    import torch.distributed.nn.functional as dist_fn

    return dist_fn.all_reduce(t)


def check_launch(accelerator: Accelerator) -> None:
    """Refuse runs where the launcher started N processes that do not see each other.

    Measured on CPU: `--multi_gpu` without ACCELERATE_USE_CPU=1 gives num_processes == WORLD_SIZE
    and even a gloo process group, but distributed type NO: no gradient is ever synchronised.
    """
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() == expected
    grouped = grouped and accelerator.distributed_type != DistributedType.NO  # else nothing wraps the model
    if accelerator.num_processes != expected or (expected > 1 and not grouped):
        raise LaunchMismatch(
            f"the launch set WORLD_SIZE={expected} but this process sees {accelerator.num_processes} process(es) "
            f"without a synchronised setup (distributed type "
            f"{accelerator.distributed_type.value}): the processes would train unsynchronised. On a CPU machine use "
            f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` (see recipes/accelerate/README.md)."
        )


def split_batch(effective: int, processes: int, per_device: int | None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with processes x per-device x accumulation = effective."""
    if effective % processes:
        raise ValueError(f"effective batch {effective} is not divisible by {processes} processes")
    per_process = effective // processes
    per_device = per_device or per_process
    if per_process % per_device:
        raise ValueError(f"per-device batch {per_device} does not divide {per_process} (effective {effective} / {processes} processes)")
    return per_device, per_process // per_device


KERNEL_OPTIONS = {"auto": {}, "for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def build_optimizer(params: list[nn.Parameter], tc: Any) -> torch.optim.Optimizer:
    """SGD with momentum as in the paper; AdamW for short from-scratch schedules (the demo)."""
    kernel = KERNEL_OPTIONS[getattr(tc, "optimizer_kernel", "auto")]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay, **kernel)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, **kernel)
    raise ValueError(f"train.optimizer must be sgd or adamw, not {tc.optimizer!r}")


def loader_options(dc: Any, workers: int) -> dict[str, Any]:
    """The recipe's loader settings that DataLoader accepts with this many workers."""
    out: dict[str, Any] = {"pin_memory": dc.pin_memory and torch.cuda.is_available()}
    if workers > 0:
        out["persistent_workers"] = dc.persistent_workers
        if dc.prefetch_factor is not None:
            out["prefetch_factor"] = dc.prefetch_factor
    return out


def compile_parts(targets: list[str], student: nn.Module, teacher: nn.Module | None, method: nn.Module) -> list[str]:
    """torch.compile the named parts in place (their state_dict keys stay); returns what was compiled."""
    parts: dict[str, list[nn.Module]] = {"student": [student], "teacher": [teacher] if teacher is not None else [],
                                         "projector": [m for n, m in method.named_modules() if n.endswith("projector")]}
    from torch._dynamo.utils import counters

    counters.clear()  # this run's compilations only
    done = []
    for target in targets:
        for m in parts[target]:
            m.compile()
            done.append(target)
    return done


def compile_counts(compiled: list[str]) -> dict[str, Any]:
    """How often dynamo compiled: each compiled part once, every further frame a recompilation."""
    from torch._dynamo.utils import counters

    frames = int(counters["frames"].get("total", 0))
    return {"parts": compiled, "frames_compiled": frames, "graphs": int(counters["stats"].get("unique_graphs", 0)),
            "recompilations": max(0, frames - len(compiled))}


def teacher_forward(teacher: nn.Module, images: torch.Tensor, tc: Any, autocast: Any) -> SegmentorOutput:
    """The frozen teacher's outputs, under no_grad or (train.teacher_inference_mode) inference_mode.
    Inference tensors may not be saved for a backward pass; no loss here saves the teacher's outputs
    as they are (each detaches, casts or normalises them first), but a new method might: they are
    copied out as plain tensors (a few maps, against a whole forward)."""
    if not tc.teacher_inference_mode:
        with torch.no_grad(), autocast():
            return teacher(images)
    with torch.inference_mode(), autocast():
        out = teacher(images)
    return SegmentorOutput(*(t.clone() if isinstance(t, torch.Tensor) else t for t in out))


def input_layout(images: torch.Tensor, tc: Any) -> torch.Tensor:
    """A batch in the memory layout the networks were given (speed_layout)."""
    return images.contiguous(memory_format=torch.channels_last) if tc.channels_last else images


def speed_layout(tc: Any, *modules: nn.Module | None) -> None:
    """The recipe's channels_last and cudnn.benchmark settings, on the given modules."""
    if tc.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if tc.channels_last:
        for m in modules:
            if m is not None:
                m.to(memory_format=torch.channels_last)


def flat_hparams(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted scalar settings, as TensorBoard's hparams want them."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def note_trained(progress: dict[str, Any], names: Any) -> None:
    """Add the names of terms that trained to the run's progress, saved with every checkpoint, so a
    resumed run's record lists those of its earlier sessions too."""
    seen = progress.setdefault("trained_terms", [])
    if any(n not in seen for n in names):
        progress["trained_terms"] = sorted({*seen, *names})


def trained_weights(weights: dict[str, float], trained: set[str]) -> dict[str, float | None]:
    """The record's method_terms: each term the run trained, with its weight (None: the method
    declared none), and the task's aux weight; a declared weight whose term never ran is left out."""
    out: dict[str, float | None] = {k: weights.get(k) for k in sorted(trained)}
    if "task" in trained and weights.get("task_aux"):
        out["task_aux"] = weights["task_aux"]
    return out


def build_student(cfg: RecipeConfig, num_classes: int) -> Segmentor:
    s = cfg.student
    pretrained = digits_pretrained(s.backbone) if s.pretrained == DIGITS else s.pretrained
    return build_segmentor(s.arch, s.backbone, num_classes, pretrained, s.aux, s.head_width)


def load_teacher(cfg: RecipeConfig) -> Segmentor:
    t = cfg.teacher
    if t is None or not t.checkpoint:
        raise FileNotFoundError("this method needs a teacher: set teacher.checkpoint=PATH (a checkpoint written by a teacher run or import-released)")
    if not Path(t.checkpoint).is_file():
        raise FileNotFoundError(f"teacher checkpoint {t.checkpoint} not found; train the teacher recipe first or point teacher.checkpoint at it")
    teacher = load_segmentor(t.checkpoint)
    built = (teacher.build_args["arch"], teacher.build_args["backbone"])
    if built != (t.arch, t.backbone):
        raise ValueError(
            f"teacher checkpoint {t.checkpoint} is a {built[0]}-{built[1]}, but the recipe says teacher.arch={t.arch} "
            f"teacher.backbone={t.backbone}: point teacher.checkpoint at the right file or set both keys to what it holds"
        )
    return teacher


def loader_workers(requested: int) -> int:
    """data.num_workers, capped at the CPUs this process may use (more only oversubscribe)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(requested, cpus)


def trackers_of(tc: Any) -> list[str]:
    """The recipe's trackers, each checked to be importable before any step runs."""
    from accelerate.tracking import get_available_trackers

    names = list(dict.fromkeys([*tc.trackers, *(["tensorboard"] if tc.tensorboard else [])]))
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"train.trackers: {', '.join(missing)} not installed (pip install the tracker's package, "
                         f"e.g. tensorboardx, wandb, mlflow-skinny); installed: {sorted(available) or 'none'}")
    return names


def _prepare_run_folder(accelerator: Accelerator, name: str, run_dir: Path, results_dir: Path | None, resume: bool,
                        current: dict[str, Any]) -> tuple[RunLock | None, Path | None, Path | None]:
    """On the main process: writable folders, no other run's record in the way, the lock, a
    set-aside old run, the settings check.
    Any refusal is raised on every process (the others would otherwise wait at a collective)."""
    lock = aside = None
    error: str | None = None
    if accelerator.is_main_process:
        try:
            check_writable(run_dir.parent, "output folder (output_dir)")
            if results_dir is not None:
                check_writable(results_dir, "results folder")
                check_record_slot(record_path(results_dir, name, current["train"]["seed"]), current)
            lock = RunLock(run_dir.with_name(run_dir.name + ".lock"))
            lock.acquire()
            if not resume:
                aside = set_aside(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            state = latest_state(run_dir) if resume else None
            if state is not None:
                check_resumable(run_dir, state, read_progress(state), current)
        except RunFolderError as exc:
            error = str(exc)
            if lock is not None:
                lock.release()
    if accelerator.num_processes > 1:
        box = [error]
        broadcast_object_list(box)
        error = box[0]
        accelerator.wait_for_everyone()
    if error:
        raise RunFolderError(error)
    return lock, aside, latest_state(run_dir) if resume else None


def train(
    cfg: RecipeConfig,
    results_dir: str | os.PathLike | None = None,
    per_device_batch: int | None = None,
    convert_sync_bn: Callable[[nn.Module], nn.Module] | None = None,
    resume: bool = True,
    show_progress: bool = True,
    hooks: TrainHooks | None = None,
) -> dict[str, Any]:
    """Train one recipe; returns (and writes to results_dir) its run record."""
    tc = cfg.train
    probe_procs = int(os.environ.get("WORLD_SIZE", "1"))
    _, accum = split_batch(tc.effective_batch, probe_procs, per_device_batch)
    trackers = trackers_of(tc)
    # CPU runs of several processes talk over gloo (DeepSpeed otherwise asserts on batch sizes).
    handlers = [InitProcessGroupKwargs(backend="gloo")] if probe_procs > 1 and not torch.cuda.is_available() else []
    run_dir = run_folder(cfg.output_dir, cfg.name, tc.seed)
    accelerator = Accelerator(
        log_with=trackers or None,
        project_dir=str(run_dir),
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(even_batches=False),
        kwargs_handlers=handlers,
    )
    check_launch(accelerator)
    per_device, accum = split_batch(tc.effective_batch, accelerator.num_processes, per_device_batch)
    if tc.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(f"train.mixed_precision=fp16 needs a CUDA device; on {accelerator.device.type} Accelerate would train "
                         "in fp32 while the record said fp16: use train.mixed_precision=bf16 or no")
    current = identity(settings(to_dict(cfg)), input_files(cfg), launch(accelerator.num_processes, per_device, accum))
    lock, aside, state = _prepare_run_folder(accelerator, cfg.name, run_dir, Path(results_dir) if results_dir is not None else None,
                                             resume, current)
    try:
        if stage_of(cfg.method.name):  # a teacher-side stage (MasKD's tokens): no student
            from .stage import train_stage

            return train_stage(cfg, accelerator, run_dir, state, current, per_device, accum, results_dir, show_progress,
                               hooks or TrainHooks())
        return _train(cfg, accelerator, run_dir, state, aside, current, trackers, per_device, accum, results_dir,
                      convert_sync_bn, show_progress, hooks or TrainHooks())
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RecipeConfig, accelerator: Accelerator, run_dir: Path, state: Path | None, aside: Path | None,
           current: dict[str, Any], trackers: list[str], per_device: int, accum: int,
           results_dir: str | os.PathLike | None, convert_sync_bn: Callable[[nn.Module], nn.Module] | None,
           show_progress: bool, hooks: TrainHooks) -> dict[str, Any]:
    tc = cfg.train
    set_seed(tc.seed)
    if trackers:
        accelerator.init_trackers(cfg.name.replace("/", "__") + f"__seed{tc.seed}", config=flat_hparams(to_dict(cfg)))
    num_classes = cfg.num_classes

    if cfg.student.pretrained == DIGITS:  # the demo's ImageNet stand-in, made once by one process
        with accelerator.main_process_first():
            digits_pretrained(cfg.student.backbone, log=accelerator.print)
    student = build_student(cfg, num_classes)
    if hooks.adapt_student is not None:
        student = hooks.adapt_student(student)
    teacher = None
    if needs_teacher(cfg.method.name):
        teacher = load_teacher(cfg)
        if teacher.num_classes != num_classes:
            raise ValueError(f"teacher predicts {teacher.num_classes} classes, the recipe {num_classes}")
        if teacher.build_args["normalization"] != student.build_args["normalization"]:
            raise ValueError(
                "teacher and student expect different input normalisation "
                f"({teacher.build_args['normalization']} vs {student.build_args['normalization']}); "
                "use weights with one convention for both"
            )
    method = build_method(cfg.method, BuildContext(
        student=student.output_channels, teacher=teacher.output_channels if teacher is not None else None,
        num_classes=num_classes, ignore_index=IGNORE_INDEX, crop_size=tuple(cfg.data.crop_size),
        num_processes=accelerator.num_processes, gather=accelerator.gather,
        reduce_mean=lambda t: accelerator.reduce(t, reduction="mean"),
        sum_across=differentiable_sum if accelerator.num_processes > 1 else (lambda t: t),
        device=accelerator.device, per_device_batch=per_device, seed=tc.seed))
    sync_bn = None  # several processes: the student and the own parts normalise over the global batch
    if accelerator.num_processes > 1:
        sync_bn = convert_sync_bn or (nn.SyncBatchNorm.convert_sync_batchnorm if accelerator.device.type == "cuda" else None)
    if sync_bn is not None:
        student = sync_bn(student)
        method = sync_bn(method)  # a method's own BatchNorm (CIRKD's projection head) too
    own_parts = method.own_parts()
    check_own_parts(accelerator, cfg.method.name, list(own_parts))
    for part in own_parts.values():  # outside the student's wrapper: its own device move, SyncBN and optimizer
        if sync_bn is not None:
            part.module = sync_bn(part.module)
        part.module.to(accelerator.device)
        part.optimizer = part.make_optimizer([p for p in part.module.parameters() if p.requires_grad])
    if own_parts:
        accelerator.register_for_checkpointing(OwnPartsState(own_parts))
    run_states = method.run_states()
    if run_states:
        accelerator.register_for_checkpointing(RunStates(run_states))
    speed_layout(tc, student, method, teacher, *(part.module for part in own_parts.values()))
    compiled = compile_parts(tc.compile, student, teacher, method)
    step_module = DistillStep(student, method)

    norm = student.build_args["normalization"]
    root = resolve_root(cfg.data.name, cfg.data.root)
    train_ds = build_dataset(cfg.data.name, root, "train", train=True, crop_size=tuple(cfg.data.crop_size),
                             scale_range=tuple(cfg.data.scale_range), normalization=norm, seed=tc.seed,
                             flip=cfg.data.flip, scale_step=cfg.data.scale_step)
    val_ds = build_dataset(cfg.data.name, root, cfg.data.val_split, normalization=norm)
    if len(train_ds) < per_device * accelerator.num_processes:
        raise ValueError(f"training set has {len(train_ds)} images, fewer than one global micro-batch")
    workers = loader_workers(cfg.data.num_workers)
    extra = loader_options(cfg.data, workers)
    train_loader = DataLoader(train_ds, batch_size=per_device, shuffle=True, drop_last=True, num_workers=workers,
                              generator=torch.Generator().manual_seed(tc.seed), **extra)
    val_loader = DataLoader(val_ds, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=workers, **extra)
    test_loader = None
    if cfg.data.test_split:  # selected on val, reported on test (docs/method.md, "Evaluation")
        test_ds = build_dataset(cfg.data.name, root, cfg.data.test_split, normalization=norm)
        test_loader = DataLoader(test_ds, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=workers, **extra)

    params = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, tc)
    global_clip = disable_global_clip(accelerator)
    clip_params = method.clip_parameters()  # the same Parameter objects after prepare (wrapped, not copied)
    check_deepspeed_clip(accelerator, clip_params, cfg.method.clip_grad_norm)
    full_student = FullWeights(accelerator, student)
    step_module, optimizer, train_loader, val_loader = accelerator.prepare(step_module, optimizer, train_loader, val_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)

    progress_state: dict[str, Any] = {"step": 0, "best_miou": None, "best_step": None, "history": [], "train_seconds": 0.0,
                                      "wall_seconds": 0.0, "teacher": None}
    if state is not None:
        progress_state = load_training_state(accelerator, state)
    progress_state["settings"] = current
    progress_state.setdefault("test_history", [])
    resumed_from = progress_state["step"] if state is not None else None
    times = RunTimes(progress_state)
    show = show_progress and accelerator.is_main_process
    progress = make_progress(show)
    interactive = progress.console.is_terminal
    log = progress.console.log if show else (lambda *a, **k: None)
    heartbeat = Heartbeat(cfg.name, tc.iterations, progress_state["step"], progress.console.print, show and not interactive)
    step = progress_state["step"]
    with progress, StopRequests() as stops:
        if aside is not None:
            log(f"--no-resume: the earlier run in {run_dir} was moved to {aside}")
        if workers < cfg.data.num_workers:
            log(f"data.num_workers={cfg.data.num_workers} but this process may use {workers} CPU(s): using {workers} loader workers")
        if state is not None:
            log(f"resumed {cfg.name} from {state} at step {progress_state['step']}")
        if teacher is not None and progress_state["teacher"] is None and cfg.eval.teacher_check:
            progress_state["teacher"] = evaluate(teacher, val_loader, num_classes, accelerator, cfg.eval, progress if show else None)
            log(f"teacher mIoU {100 * progress_state['teacher']['miou']:.2f} (sanity check of the teacher checkpoint)")
        task = progress.add_task(cfg.name, total=tc.iterations, completed=step, info="")
        micro = step * accum
        step_module.train()
        times.start_training()
        last: dict[str, float] = {}
        try:
            if step < tc.iterations:
                for batch in resumed_batches(accelerator, train_ds, train_loader, micro):
                    lr = poly_lr(tc.lr, step, tc.iterations, tc.poly_power, tc.lr_floor)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    if hooks.before_update is not None:
                        hooks.before_update(micro)
                    images = input_layout(batch["image"], tc)
                    with accelerator.accumulate(step_module):
                        teacher_out = None
                        if teacher is not None:
                            teacher_out = teacher_forward(teacher, images, tc, accelerator.autocast)
                        terms = step_module(images, batch["label"], teacher_out)
                        loss = sum(terms.values())
                        check_finite(accelerator, loss, terms, cfg.name, step, run_dir)
                        backward_and_step(accelerator, loss, optimizer, clip_params, cfg.method.clip_grad_norm)
                    micro += 1
                    last = {k: float(v.detach()) for k, v in terms.items()}
                    note_trained(progress_state, last)
                    if not accelerator.sync_gradients:
                        continue
                    own_terms = method.after_step()  # parts with their own optimizer (a discriminator)
                    note_trained(progress_state, own_terms)
                    step += 1
                    progress.update(task, advance=1, info=f"loss {sum(last.values()):.3f} lr {lr:.2e}")
                    heartbeat.step(step, f"loss {sum(last.values()):.3f}")
                    if step % tc.log_interval == 0 or step == tc.iterations:
                        shown = {**last, **own_terms}
                        accelerator.log({**{f"train/{k}": v for k, v in shown.items()}, "train/lr": lr}, step=step)
                        log(f"step {step}/{tc.iterations} " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
                    if step % tc.val_interval == 0 or step == tc.iterations:
                        current = full_student.current()
                        scores = evaluate(current, val_loader, num_classes, accelerator, cfg.eval, progress if show else None)
                        progress_state["history"].append({"step": step, "miou": scores["miou"], "lr": lr})  # lr of this step's update
                        tested = None
                        if test_loader is not None:
                            tested = evaluate(current, test_loader, num_classes, accelerator, cfg.eval, progress if show else None)
                            progress_state["test_history"].append({"step": step, "miou": tested["miou"], "lr": lr})
                            progress_state["final_test"] = tested
                            accelerator.log({"test/miou": tested["miou"]}, step=step)
                        if progress_state["best_miou"] is None or scores["miou"] > progress_state["best_miou"]:
                            progress_state["best_miou"], progress_state["best_step"] = scores["miou"], step
                            progress_state["best_scores"] = scores
                            progress_state["test_at_best"] = tested
                            if accelerator.is_main_process:
                                save_segmentor(current, run_dir / "best.safetensors", {"step": step, "miou": scores["miou"]})
                        progress_state["final_scores"] = scores
                        accelerator.log({"val/miou": scores["miou"], "val/pixel_acc": scores["pixel_acc"]}, step=step)
                        on_test = f"; {cfg.data.test_split} mIoU {100 * tested['miou']:.2f}" if tested else ""
                        log(f"step {step}: val mIoU {100 * scores['miou']:.2f} (best {100 * progress_state['best_miou']:.2f} "
                            f"@ {progress_state['best_step']}){on_test}")
                    if step % tc.checkpoint_interval == 0 or step == tc.iterations:
                        times.checkpoint(accelerator, run_dir, progress_state, step, hooks.after_checkpoint)
                    if step >= tc.iterations:
                        break
                    stop_if_requested(stops, accelerator, times, run_dir, progress_state, step, cfg.name, hooks.after_checkpoint)
        except KeyboardInterrupt:
            raise interrupted(cfg.name, step, times.saved_step) from None
    session_wall = times.session()
    final_student = full_student.current()
    if accelerator.is_main_process:
        save_segmentor(final_student, run_dir / "final.safetensors", {"step": step})
    final = progress_state.get("final_scores") or {}
    best = progress_state.get("best_scores") or {}
    record = {
        **run_facts(cfg, accelerator, per_device, accum, progress_state, resumed_from, times.wall_before, session_wall),
        "method_terms": trained_weights(method.weights(), set(progress_state.get("trained_terms", []))),
        "method_parameters": sum(p.numel() for p in method.parameters()),  # trained with the student
        "own_parts": {k: sum(p.numel() for p in part.module.parameters()) for k, part in own_parts.items()},
        "method_state_bytes": method.state_bytes(),  # state beyond trained weights (CIRKD's queues), per method
        "student": f"{cfg.student.arch}-{cfg.student.backbone}",
        "teacher": f"{teacher.build_args['arch']}-{teacher.build_args['backbone']}" if teacher is not None else None,
        "teacher_checkpoint": recorded_path(cfg.teacher.checkpoint, project_root()) if teacher is not None else None,
        "global_grad_clip": global_clip,
        "trackers": trackers,
        "compile": compile_counts(compiled) if compiled else None,
        "final_miou": final.get("miou"),
        "best_miou": progress_state.get("best_miou"),
        "best_step": progress_state.get("best_step"),
        "final_iou": final.get("iou"),
        "best_iou": best.get("iou"),
        "final_pixel_acc": final.get("pixel_acc"),
        "history": progress_state["history"],
        # with data.test_split: scores of that split; the selected checkpoint is still chosen on val_split
        "test_split": cfg.data.test_split,
        "test_miou_at_best": (progress_state.get("test_at_best") or {}).get("miou"),
        "final_test_miou": (progress_state.get("final_test") or {}).get("miou"),
        "best_test_miou": max((h["miou"] for h in progress_state["test_history"]), default=None),
        "test_history": progress_state["test_history"],
        "teacher_miou": (progress_state["teacher"] or {}).get("miou"),
        "published_miou": cfg.published.miou,
        "checkpoint": recorded_path(run_dir / "final.safetensors", project_root()),  # config/runs.py
        "best_checkpoint": recorded_path(run_dir / "best.safetensors", project_root()),
    }
    if accelerator.is_main_process:  # what the scores are of: a later run in the same folder is told apart (plots, eval)
        record["checkpoint_sha256"] = file_sha256(run_dir / "final.safetensors")
        best_file = run_dir / "best.safetensors"
        record["best_checkpoint_sha256"] = file_sha256(best_file) if best_file.is_file() else None
    if accelerator.is_main_process and results_dir is not None:
        record["record_path"] = str(write_record(record_path(Path(results_dir), cfg.name, tc.seed), record))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record
