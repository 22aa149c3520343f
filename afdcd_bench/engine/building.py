"""Building a run from its recipe: the networks, the method, the optimiser and the loaders.

Shared by the student loop (trainer.py) and the teacher-side stage loop (stage.py); nothing here
steps. What is built draws on the seeded random stream in a fixed order (student, teacher, method):
a rerun, a resume and a run under another executor build the same weights (docs/runs.md, "Resuming").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..config import RecipeConfig
from ..data import build_dataset, resolve_root
from ..losses import IGNORE_INDEX
from ..methods import BuildContext, Method, OwnPart, OwnPartsState, RunStates, build_method, needs_teacher
from ..models import Segmentor, build_segmentor, load_segmentor
from .feeding import loader_options, loader_workers
from .full_weights import FullWeights
from .pretrain import DIGITS, digits_pretrained
from .provenance import check_finite_weights
from .stepping import check_deepspeed_clip, check_own_parts, disable_global_clip


def build_student(cfg: RecipeConfig, num_classes: int) -> Segmentor:
    s = cfg.student
    pretrained = digits_pretrained(s.backbone) if s.pretrained == DIGITS else s.pretrained
    return build_segmentor(s.arch, s.backbone, num_classes, pretrained, s.aux, s.head_width)


def load_teacher(cfg: RecipeConfig) -> Segmentor:
    """The recipe's teacher checkpoint, refused when it is not the network the recipe names or does
    not predict the recipe's classes."""
    t = cfg.teacher
    if t is None or not t.checkpoint:
        raise FileNotFoundError("this method needs a teacher: set teacher.checkpoint=PATH (a checkpoint written by a teacher run or import-released)")
    if not Path(t.checkpoint).is_file():
        from ..models.fetch import BY_KEY, weights_root

        released = BY_KEY.get(f"{cfg.benchmark}-teacher")
        fetch = (f", or use the released one: `afdcd-bench weights fetch --teachers {cfg.benchmark}` then "
                 f"teacher.checkpoint={weights_root() / released.dst}") if released else ""
        raise FileNotFoundError(f"teacher checkpoint {t.checkpoint} not found; train the teacher recipe first or point "
                                f"teacher.checkpoint at it{fetch}")
    teacher = load_segmentor(t.checkpoint)
    check_finite_weights(teacher.state_dict(), t.checkpoint, "teacher checkpoint")
    built = (teacher.build_args["arch"], teacher.build_args["backbone"])
    if built != (t.arch, t.backbone):
        raise ValueError(
            f"teacher checkpoint {t.checkpoint} is a {built[0]}-{built[1]}, but the recipe says teacher.arch={t.arch} "
            f"teacher.backbone={t.backbone}: point teacher.checkpoint at the right file or set both keys to what it holds"
        )
    if teacher.num_classes != cfg.num_classes:
        raise ValueError(f"teacher predicts {teacher.num_classes} classes, the recipe {cfg.num_classes}")
    return teacher


def check_pair(teacher: Segmentor, student: Segmentor) -> None:
    """Both networks read the same input tensor: their normalisations must agree."""
    if teacher.build_args["normalization"] != student.build_args["normalization"]:
        raise ValueError(
            "teacher and student expect different input normalisation "
            f"({teacher.build_args['normalization']} vs {student.build_args['normalization']}); "
            "use weights with one convention for both"
        )


def differentiable_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes whose backward sends each process its share of the gradient."""
    import torch.distributed.nn.functional as dist_fn

    return dist_fn.all_reduce(t)


def build_context(cfg: RecipeConfig, accelerator: Accelerator, per_device: int, student: Segmentor | None,
                  teacher: Segmentor | None) -> BuildContext:
    """What a method may know of the run it is built for (shapes, processes, collectives)."""
    processes = accelerator.num_processes
    return BuildContext(
        student=student.output_channels if student is not None else {},
        teacher=teacher.output_channels if teacher is not None else None,
        num_classes=cfg.num_classes, ignore_index=IGNORE_INDEX, crop_size=tuple(cfg.data.crop_size),
        num_processes=processes, gather=accelerator.gather,
        reduce_mean=lambda t: accelerator.reduce(t, reduction="mean"),
        sum_across=differentiable_sum if processes > 1 else (lambda t: t),
        device=accelerator.device, per_device_batch=per_device, seed=cfg.train.seed, iterations=cfg.train.iterations,
        student_strides=dict(getattr(student, "output_strides", {})),
        teacher_strides=dict(getattr(teacher, "output_strides", {})) if teacher is not None else None)


def build_student_method(cfg: RecipeConfig, accelerator: Accelerator, per_device: int, student: Segmentor,
                         teacher: Segmentor | None) -> Method:
    return build_method(cfg.method, build_context(cfg, accelerator, per_device, student, teacher))


class DistillStep(nn.Module):
    """Student + method in one module, so one DDP/DeepSpeed wrapper covers all trained weights."""

    def __init__(self, student: Segmentor, method: nn.Module):
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, images: torch.Tensor, labels: torch.Tensor, teacher_out: Any) -> dict[str, torch.Tensor]:
        return self.method(self.student(images), teacher_out, labels)


def sync_batchnorm(accelerator: Accelerator,
                   convert: Callable[[nn.Module], nn.Module] | None) -> Callable[[nn.Module], nn.Module] | None:
    """Over several processes the student and the method's own BatchNorm (CIRKD's projection head)
    normalise over the global batch; `convert` replaces the CUDA default (tests pass a gloo one)."""
    if accelerator.num_processes <= 1:
        return None
    return convert or (nn.SyncBatchNorm.convert_sync_batchnorm if accelerator.device.type == "cuda" else None)


def set_up_own_parts(accelerator: Accelerator, method: Method, method_name: str,
                     sync_bn: Callable[[nn.Module], nn.Module] | None) -> dict[str, OwnPart]:
    """Parts with their own optimiser (a discriminator) live outside the student's wrapper: their own
    device move, SyncBatchNorm and optimiser; they and the method's run states (CIRKD's queues)
    join Accelerate's checkpoint."""
    own_parts = method.own_parts()
    check_own_parts(accelerator, method_name, list(own_parts))
    for part in own_parts.values():
        if sync_bn is not None:
            part.module = sync_bn(part.module)
        part.module.to(accelerator.device)
        part.optimizer = part.make_optimizer([p for p in part.module.parameters() if p.requires_grad])
    if own_parts:
        accelerator.register_for_checkpointing(OwnPartsState(own_parts))
    run_states = method.run_states()
    if run_states:
        accelerator.register_for_checkpointing(RunStates(run_states))
    return own_parts


KERNEL_OPTIONS = {"auto": {}, "for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def build_optimizer(params: list[nn.Parameter], tc: Any) -> torch.optim.Optimizer:
    """SGD with momentum as in the paper; AdamW for short from-scratch schedules (the demo)."""
    kernel = KERNEL_OPTIONS[getattr(tc, "optimizer_kernel", "auto")]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay, **kernel)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, **kernel)
    raise ValueError(f"train.optimizer must be sgd or adamw, not {tc.optimizer!r}")


def training_data(cfg: RecipeConfig, per_device: int, processes: int, on_gpu: bool) -> tuple[Any, DataLoader]:
    """The augmented training set and its loader (shuffled by the seed; each epoch reseeded by the loop),
    its workers and options from the cores this process was given (engine/feeding.py)."""
    dc = cfg.data
    dataset = build_dataset(dc.name, resolve_root(dc.name, dc.root), "train", train=True, crop_size=tuple(dc.crop_size),
                            scale_range=tuple(dc.scale_range), seed=cfg.train.seed,
                            flip=dc.flip, scale_step=dc.scale_step, cache=dc.cache, cache_dir=dc.cache_dir)
    if len(dataset) < per_device * processes:
        raise ValueError(f"training set has {len(dataset)} images, fewer than one global micro-batch")
    workers = loader_workers(dc.num_workers, on_gpu)
    loader = DataLoader(dataset, batch_size=per_device, shuffle=True, drop_last=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(cfg.train.seed), **loader_options(dc, workers, on_gpu))
    return dataset, loader


def evaluation_loaders(cfg: RecipeConfig, on_gpu: bool) -> tuple[DataLoader, DataLoader | None]:
    """The validation loader, and the test split's where the recipe reports on one (selected on val,
    reported on test: docs/method.md, "Evaluation"). Their workers are kept between passes only where
    the recipe says so: by default only the training loader's stay (one set of workers per process)."""
    dc = cfg.data
    root = resolve_root(dc.name, dc.root)
    workers = loader_workers(dc.num_workers, on_gpu)
    extra = loader_options(dc, workers, on_gpu, persistent_by_default=False)

    def loader(split: str) -> DataLoader:
        dataset = build_dataset(dc.name, root, split, cache=dc.cache, cache_dir=dc.cache_dir)
        # a generator of its own: without one, each pass's iterator draws its seed from the global RNG,
        # which dropout and the distillers' masks draw from next, so validating more often would change
        # the trained weights (docs/runs.md, "The training code")
        return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=workers,
                          generator=torch.Generator().manual_seed(0), **extra)

    return loader(dc.val_split), loader(dc.test_split) if dc.test_split else None


def speed_layout(tc: Any, *modules: nn.Module | None) -> None:
    """The recipe's channels_last and cudnn.benchmark settings, on the given modules."""
    if tc.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if tc.channels_last:
        for m in modules:
            if m is not None:
                m.to(memory_format=torch.channels_last)


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


@dataclass
class StudentRun:
    """What a student run trains and reads, built and wrapped by Accelerate (`model`, `optimizer`
    and the loaders are the prepared ones; `student` and `method` the modules inside `model`)."""

    student: Segmentor
    teacher: Segmentor | None
    method: Method
    own_parts: dict[str, OwnPart]
    model: nn.Module
    optimizer: Any
    train_set: Any
    train_loader: Any
    val_loader: Any
    test_loader: Any
    clip_params: list[nn.Parameter]
    global_clip: float
    compiled: list[str]
    full_student: FullWeights


def build_student_run(cfg: RecipeConfig, accelerator: Accelerator, per_device: int,
                      adapt_student: Callable[[nn.Module], nn.Module] | None = None,
                      convert_sync_bn: Callable[[nn.Module], nn.Module] | None = None) -> StudentRun:
    """The networks and the method (in the order they draw on the seeded random stream), the data,
    the optimiser, and Accelerate's wrapping of what trains."""
    tc = cfg.train
    if cfg.student.pretrained == DIGITS:  # the demo's ImageNet stand-in, made once by one process
        with accelerator.main_process_first():
            digits_pretrained(cfg.student.backbone, log=accelerator.print)
    student = build_student(cfg, cfg.num_classes)
    if adapt_student is not None:
        student = adapt_student(student)
    teacher = load_teacher(cfg) if needs_teacher(cfg.method.name) else None
    if teacher is not None:
        check_pair(teacher, student)
    method = build_student_method(cfg, accelerator, per_device, student, teacher)
    sync_bn = sync_batchnorm(accelerator, convert_sync_bn)
    if sync_bn is not None:
        student, method = sync_bn(student), sync_bn(method)
    own_parts = set_up_own_parts(accelerator, method, cfg.method.name, sync_bn)
    speed_layout(tc, student, method, teacher, *(part.module for part in own_parts.values()))
    compiled = compile_parts(tc.compile, student, teacher, method)
    model = DistillStep(student, method)

    on_gpu = accelerator.device.type == "cuda"
    train_set, train_loader = training_data(cfg, per_device, accelerator.num_processes, on_gpu)
    val_loader, test_loader = evaluation_loaders(cfg, on_gpu)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], tc)
    global_clip = disable_global_clip(accelerator)
    clip_params = method.clip_parameters()  # the same Parameter objects after prepare (wrapped, not copied)
    check_deepspeed_clip(accelerator, clip_params, cfg.method.clip_grad_norm)
    full_student = FullWeights(accelerator, student)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    return StudentRun(student, teacher, method, own_parts, model, optimizer, train_set, train_loader, val_loader,
                      test_loader, clip_params, global_clip, compiled, full_student)
