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


def test_eager_distances_in_chunks_equal_one_call(monkeypatch):
    """Batches whose cdist backward buffer would pass 2^31 elements go through in chunks (the CUDA
    kernel indexes it in 32 bits); chunking changes no number."""
    import afdcd_bench.losses.contrastive as c

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 64, 8, 8, generator=gen, requires_grad=True)
    t = torch.randn(4, 64, 8, 8, generator=gen)
    whole = c.contrastive_loss(s, t, mode="omni")
    (g_whole,) = torch.autograd.grad(whole, s)
    monkeypatch.setattr(c, "CDIST_ELEMENTS", 3 * 16 * 16 * 4)  # 3 rows of (P, Q, D) = (16, 16, 4) a call
    chunked = c.contrastive_loss(s, t, mode="omni")
    (g_chunked,) = torch.autograd.grad(chunked, s)
    assert torch.allclose(whole, chunked) and torch.allclose(g_whole, g_chunked)
