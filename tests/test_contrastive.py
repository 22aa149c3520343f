"""The contrastive term against a deliberately plain oracle written from docs/method.md."""
import itertools
import math

import pytest
import torch

from afdcd_bench.losses import contrastive_loss


def _dist(a, b, distance):
    diff = [abs(x - y) for x, y in zip(a, b)]
    if distance == "l1":
        return sum(diff)
    return math.sqrt(sum(d * d for d in diff))


def _vec(x, b, chans, y, xx):
    return [float(x[b, c, y, xx]) for c in chans]


def oracle(student, teacher, mode, groups, patch, tau, distance):
    """Loops over every sample; shares no code with the implementation."""
    B, C, H, W = student.shape
    ph, pw = patch
    d = C // groups
    total = 0.0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                py, px = (y // ph) * ph, (x // pw) * pw
                cells = [(py + i, px + j) for i in range(ph) for j in range(pw)]
                if mode == "spatial":
                    s = _vec(student, b, range(C), y, x)
                    cands = [_vec(teacher, b, range(C), cy, cx) for cy, cx in cells]
                    pos = cells.index((y, x))
                    logits = [-_dist(s, t, distance) / tau for t in cands]
                    total += -logits[pos] + math.log(sum(math.exp(v) for v in logits))
                    continue
                for m in range(groups):
                    chans = range(m * d, (m + 1) * d)
                    s = _vec(student, b, chans, y, x)
                    pos_logit = -_dist(s, _vec(teacher, b, chans, y, x), distance) / tau
                    logits = [pos_logit]
                    if mode == "channel":
                        for m2 in range(groups):
                            if m2 != m:
                                logits.append(-_dist(s, _vec(teacher, b, range(m2 * d, (m2 + 1) * d), y, x), distance) / tau)
                    else:
                        for (cy, cx), m2 in itertools.product(cells, range(groups)):
                            if m2 != m:
                                logits.append(-_dist(s, _vec(teacher, b, range(m2 * d, (m2 + 1) * d), cy, cx), distance) / tau)
                    mx = max(logits)
                    total += -pos_logit + mx + math.log(sum(math.exp(v - mx) for v in logits))
    return total / (B * H * W)


SHAPES = [((1, 8, 4, 4), 4, (2, 2)), ((2, 12, 4, 6), 3, (2, 3)), ((1, 16, 8, 4), 4, (4, 4))]


@pytest.mark.parametrize("mode", ["omni", "spatial", "channel"])
@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("shape,groups,patch", SHAPES)
def test_matches_oracle(mode, distance, shape, groups, patch):
    g = torch.Generator().manual_seed(hash((mode, distance, shape)) % 2**31)
    s = torch.randn(*shape, generator=g, dtype=torch.float64)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    tau = 0.5 if distance == "l1" else 0.3
    got = contrastive_loss(s, t, mode=mode, groups=groups, patch=patch, tau=tau, distance=distance).item()
    want = oracle(s, t, mode, groups, patch, tau, distance)
    assert got == pytest.approx(want, rel=1e-6)


def test_omni_sample_count_and_paper_defaults():
    # 16 positions x 16 groups per patch, 1 positive + 240 negatives: equal entries give log(241) each.
    s = torch.zeros(1, 32, 4, 4, dtype=torch.float64)
    loss = contrastive_loss(s, s.clone())
    assert loss.item() == pytest.approx(16 * math.log(241), rel=1e-12)


@pytest.mark.parametrize("mode", ["omni", "spatial", "channel"])
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_gradcheck(mode, distance):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: contrastive_loss(a, b, mode=mode, groups=2, patch=(2, 2), tau=0.5, distance=distance)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_identical_maps_are_the_minimum(distance):
    g = torch.Generator().manual_seed(5)
    t = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    at_teacher = contrastive_loss(t, t, groups=4, distance=distance)
    for scale in (1e-3, 1e-1, 1.0):
        moved = t + scale * torch.randn(t.shape, generator=g, dtype=torch.float64)
        assert contrastive_loss(moved, t, groups=4, distance=distance) > at_teacher


def test_permuting_patches_does_not_change_the_loss():
    g = torch.Generator().manual_seed(7)
    s = torch.randn(1, 8, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randn(1, 8, 8, 8, generator=g, dtype=torch.float64)

    def swap(x):  # swap the top-left and bottom-right 4x4 patches
        y = x.clone()
        y[..., :4, :4], y[..., 4:, 4:] = x[..., 4:, 4:], x[..., :4, :4]
        return y

    base = contrastive_loss(s, t, groups=4)
    assert contrastive_loss(swap(s), swap(t), groups=4).item() == pytest.approx(base.item(), rel=1e-12)
    # moving only the student's patch changes the pairing, hence the loss
    assert contrastive_loss(swap(s), t, groups=4).item() != pytest.approx(base.item(), rel=1e-6)


@pytest.mark.parametrize("mode", ["omni", "spatial", "channel"])
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_compiled_backend_matches_oracle_and_eager_gradients(mode, distance):
    g = torch.Generator().manual_seed(11)
    shape, groups, patch, tau = (2, 12, 4, 6), 3, (2, 3), 0.4
    s = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    kw = dict(mode=mode, groups=groups, patch=patch, tau=tau, distance=distance)
    got = contrastive_loss(s, t, backend="compiled", **kw)
    assert got.item() == pytest.approx(oracle(s.detach(), t.detach(), mode, groups, patch, tau, distance), rel=1e-6)
    got_grads = torch.autograd.grad(got, (s, t))
    want_grads = torch.autograd.grad(contrastive_loss(s, t, **kw), (s, t))
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if distance == "l2":  # zero distances (identical maps) keep a finite gradient, as in cdist
        same = s.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(contrastive_loss(same, same.detach(), backend="compiled", **kw), same)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "kwargs,shape,match",
    [
        ({}, (1, 16, 6, 8), "multiples of the patch"),
        ({}, (1, 20, 4, 4), "multiple of groups"),
        ({"mode": "both"}, (1, 16, 4, 4), "unknown contrastive mode"),
        ({"distance": "cos"}, (1, 16, 4, 4), "unknown distance"),
        ({"backend": "triton"}, (1, 16, 4, 4), "unknown contrastive backend"),
    ],
)
def test_bad_input_is_a_value_error(kwargs, shape, match):
    x = torch.randn(*shape)
    with pytest.raises(ValueError, match=match):
        contrastive_loss(x, x, **kwargs)


@pytest.mark.parametrize("mode", ["omni", "channel"])
def test_eager_distances_in_chunks_equal_one_call(monkeypatch, mode):
    """Batches whose cdist backward buffer would pass 2^31 elements go through in chunks (the CUDA
    kernel indexes it in 32 bits); chunking changes no number. Channel mode has many more sample
    sets (N = B*H*W) than candidates (P = groups), omni more candidates than sets: both orders."""
    import afdcd_bench.losses.contrastive as c

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 64, 8, 8, generator=gen, requires_grad=True)
    t = torch.randn(4, 64, 8, 8, generator=gen)
    whole = c.contrastive_loss(s, t, mode=mode)
    (g_whole,) = torch.autograd.grad(whole, s)
    n, p, d = c._samples(s.detach(), mode, 16, (4, 4)).shape
    assert (n > p) == (mode == "channel")
    monkeypatch.setattr(c, "CDIST_ELEMENTS", 3 * p * p * d)  # 3 sets of (P, P, D) a call: a last, shorter chunk
    calls = []
    real = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b, **kw: calls.append(a.shape[0]) or real(a, b, **kw))
    chunked = c.contrastive_loss(s, t, mode=mode)
    (g_chunked,) = torch.autograd.grad(chunked, s)
    assert calls == [3] * (n // 3) + [n % 3]
    assert torch.allclose(whole, chunked) and torch.allclose(g_whole, g_chunked)


def test_argument_checks_accept_the_smallest_settings_and_say_what_is_wrong():
    from afdcd_bench.losses.contrastive import check_contrastive_args

    check_contrastive_args("omni", "l1", 1, (1, 1), 1e-9)  # one group, 1x1 patches, any positive tau; default backend
    for args, message in [((0, (4, 4), 0.1), "groups must be >= 1, got 0"),
                          ((4, (0, 4), 0.1), r"patch must be two positive sides \(ph, pw\), got \(0, 4\)"),
                          ((4, (2, 2, 2), 0.1), r"patch must be two positive sides \(ph, pw\), got \(2, 2, 2\)"),
                          ((4, (4, 4), 0.0), "tau must be > 0, got 0.0")]:
        with pytest.raises(ValueError, match=message):
            check_contrastive_args("omni", "l1", *args)


@pytest.mark.parametrize("mode,shape,match", [
    ("omni", (2, 8, 4), r"must both be \(B, C, H, W\) of the same shape, got \(2, 8, 4\) and \(2, 8, 4\)"),
    ("spatial", (1, 20, 6, 8), r"map height/width 6x8 must be multiples of the patch sides 4x4"),
    ("channel", (1, 20, 4, 4), r"channel count 20 must be a multiple of groups=16"),
])
def test_maps_that_cannot_be_contrasted_are_refused(mode, shape, match):
    x = torch.randn(*shape)
    with pytest.raises(ValueError, match=match):
        contrastive_loss(x, x, mode=mode)
    if len(shape) == 4:  # the other mode's constraint does not apply: spatial ignores groups, channel the patch
        other = {"spatial": (1, 20, 4, 4), "channel": (1, 16, 6, 8)}[mode]
        contrastive_loss(torch.randn(*other), torch.randn(*other), mode=mode)


def test_only_the_compiled_backend_broadcasts_and_goes_through_torch_compile(monkeypatch):
    """Eager takes cdist (never stores the (N, P, Q, D) difference); "compiled" hands the term to
    torch.compile with the broadcast distance. The compile itself is replaced by the plain function
    here (test_compiled_backend_matches_oracle_and_eager_gradients compiles for real)."""
    import afdcd_bench.losses.contrastive as c

    seen, compiled = [], []
    real = c._distance
    monkeypatch.setattr(c, "_distance", lambda a, b, distance, broadcast=None: seen.append(broadcast) or real(a, b, distance, broadcast))

    def fake_compile():
        compiled.append(True)
        return c._sample_sum

    monkeypatch.setattr(c, "_compiled_sum", fake_compile)
    x, y = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    eager = contrastive_loss(x, y)
    assert seen == [False] and compiled == []
    assert torch.allclose(contrastive_loss(x, y, backend="compiled"), eager)
    assert seen == [False, True] and compiled == [True]
