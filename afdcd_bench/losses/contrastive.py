"""Dense contrastive term of Af-DCD (omni / spatial / channel contrasting).

Why this shape: the released code builds the full similarity matrix of every
(position, group) sample against every teacher entry of its patch, then copies
positives and negatives out with boolean masks.  Here the same numbers come from
one batched distance matrix and a log-sum-exp over the allowed entries: the
excluded entries (same group, other position) are set to -inf instead of being
gathered, so no mask is repeated per patch and nothing is copied twice.

Two backends give the same numbers. "eager" takes the distances from `torch.cdist`.
"compiled" writes the distance as a broadcast difference reduced over the channel axis and
hands the whole term to `torch.compile`, which fuses it into one loop nest per pass: the
(N, P, Q, D) difference is never stored, and the L1 backward becomes one vectorised
sum of sign(s - t) weighted by the incoming gradient. It compiles once per shape and setting
(seconds on CPU, needs a C++ compiler there).

Formulas (checkable against the paper, see docs/losses.md):
  sim(s, t) = -dist(s, t) / tau, dist = L1 (sum |s - t|) or L2 (||s - t||_2)
  omni:    sample (k, m) of a patch; candidates: t[k, m] (positive) and
           t[k', m'] for every position k' and every group m' != m.
  spatial: sample k (all C channels); candidates: t[k'] for every k' of the patch.
  channel: sample (k, m); candidates: t[k, m'] for every group m' (same position).
  loss = sum over samples of [logsumexp(candidates) - sim(positive)] / (B * H * W)
"""
from __future__ import annotations

import functools
import warnings

import torch

MODES = ("omni", "spatial", "channel")
DISTANCES = ("l1", "l2")
BACKENDS = ("eager", "compiled")

# inductor's own deprecation notice, printed at each compile (forward, and later backward)
warnings.filterwarnings("ignore", message=".*_prims_common.check", category=FutureWarning)


def check_contrastive_args(
    mode: str, distance: str, groups: int, patch: tuple[int, int], tau: float, backend: str = "eager"
) -> None:
    """Fail early on settings that are not one of the paper's options."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown contrastive backend {backend!r}; expected one of {BACKENDS}")
    if mode not in MODES:
        raise ValueError(f"unknown contrastive mode {mode!r}; expected one of {MODES}")
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if int(groups) < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if len(tuple(patch)) != 2 or min(patch) < 1:
        raise ValueError(f"patch must be two positive sides (ph, pw), got {patch!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def _check_shapes(student: torch.Tensor, teacher: torch.Tensor, mode: str, groups: int, patch: tuple[int, int]) -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher maps must both be (B, C, H, W) of the same shape, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    _, c, h, w = student.shape
    ph, pw = patch
    if mode in ("omni", "spatial") and (h % ph or w % pw):
        raise ValueError(
            f"map height/width {h}x{w} must be multiples of the patch sides {ph}x{pw} "
            f"(crop or pool the map first)"
        )
    if mode in ("omni", "channel") and c % groups:
        raise ValueError(f"channel count {c} must be a multiple of groups={groups}")


def _patches(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B * num_patches, ph * pw, C), positions row-major inside a patch."""
    b, c, h, w = x.shape
    ph, pw = patch
    x = x.reshape(b, c, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 3, 5, 1)  # B, nH, nW, ph, pw, C
    return x.reshape(b * (h // ph) * (w // pw), ph * pw, c)


# torch.cdist's CUDA backward works through an (N, P, Q, D) buffer indexed in 32 bits: past 2^31
# elements it writes out of bounds (measured on an H200, torch 2.11: the omni term at batch 16,
# 2048 channels, crashed with an illegal memory access). Larger batches go through in chunks.
CDIST_ELEMENTS = 2**31 - 1


def _distance(a: torch.Tensor, b: torch.Tensor, distance: str, broadcast: bool = False) -> torch.Tensor:
    """Batched pairwise distance (N, P, D) x (N, Q, D) -> (N, P, Q).

    broadcast=True is meant for torch.compile only: in eager mode it would store (N, P, Q, D).
    """
    if broadcast:
        diff = a.unsqueeze(-2) - b.unsqueeze(-3)
        if distance == "l1":
            return diff.abs().sum(-1)
        sq = diff.square().sum(-1)
        positive = sq > 0  # sqrt'(0) is infinite: take 0 there, as cdist's backward does
        return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))
    # Exact Euclidean: the matmul shortcut loses the small positive distances to
    # cancellation and then blows up the sqrt's gradient.
    options = {"p": 1.0} if distance == "l1" else {"p": 2.0, "compute_mode": "donot_use_mm_for_euclid_dist"}
    n, p, q, d = a.shape[0], a.shape[1], b.shape[1], a.shape[2]
    step = max(1, CDIST_ELEMENTS // max(1, p * q * d))
    if n <= step:
        return torch.cdist(a, b, **options)
    return torch.cat([torch.cdist(a[i:i + step], b[i:i + step], **options) for i in range(0, n, step)])


def _same_group_other_position(k: int, m: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(k * m, device=device)
    group = idx % m
    return (group[:, None] == group[None, :]) & (idx[:, None] != idx[None, :])


def contrastive_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mode: str = "omni",
    groups: int = 16,
    patch: tuple[int, int] = (4, 4),
    tau: float = 0.07,
    distance: str = "l1",
    backend: str = "eager",
) -> torch.Tensor:
    """L_ctr on two already pooled maps (B, C, H, W): sum over samples / (B * H * W)."""
    patch = (int(patch[0]), int(patch[1]))
    check_contrastive_args(mode, distance, groups, patch, tau, backend)
    _check_shapes(student, teacher, mode, groups, patch)
    b, _, h, w = student.shape
    samples, candidates = _samples(student, mode, groups, patch), _samples(teacher, mode, groups, patch)
    if backend == "compiled":
        # the layout copy stays eager: fused into the compiled loops it would read channels strided
        samples, candidates = samples.contiguous(), candidates.contiguous()
        total = _compiled_sum()(samples, candidates, mode, groups, float(tau), distance, True)
    else:
        total = _sample_sum(samples, candidates, mode, groups, tau, distance, False)
    return total / (b * h * w)


def _samples(x: torch.Tensor, mode: str, groups: int, patch: tuple[int, int]) -> torch.Tensor:
    """The vectors compared, as (N, P, D): P candidates per set, sample i's positive is entry i."""
    b, c, h, w = x.shape
    if mode == "spatial":
        return _patches(x, patch)  # (N, K, C)
    if mode == "channel":
        return x.permute(0, 2, 3, 1).reshape(b * h * w, groups, c // groups)  # (BHW, M, d)
    # (N, K, C) -> (N, K*M, d): entry index = position * M + group, groups contiguous in C
    return _patches(x, patch).reshape(-1, patch[0] * patch[1] * groups, c // groups)


@functools.cache
def _compiled_sum():
    return torch.compile(_sample_sum, dynamic=False)


def _sample_sum(
    s: torch.Tensor, t: torch.Tensor, mode: str, groups: int, tau: float, distance: str, broadcast: bool
) -> torch.Tensor:
    """Sum over samples of logsumexp(candidates) - positive."""
    logits = _distance(s, t, distance, broadcast).div(-tau)  # (N, P, P), positives on the diagonal
    if mode == "omni":
        excluded = _same_group_other_position(s.shape[1] // groups, groups, logits.device)
        logits = logits.masked_fill(excluded, float("-inf"))
    positive = torch.diagonal(logits, dim1=-2, dim2=-1)
    return (torch.logsumexp(logits, dim=-1) - positive).sum()
