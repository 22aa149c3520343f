"""The competitors' losses against formulas written out here (float64, loops), their gradients and
invariances, and the discriminator's shapes."""
import math

import pytest
import torch

from afdcd_bench.losses import (Discriminator, cwd_loss, discriminator_hinge, dist_loss, generator_hinge, ifvd_loss,
                                pairwise_loss)

D64 = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def test_cwd_is_the_per_channel_mean_of_spatial_kl_times_t2():
    s, t, T = _rand(2, 3, 2, 3, seed=1), _rand(2, 3, 2, 3, seed=2), 4.0
    total = 0.0
    for b in range(2):
        for c in range(3):
            ps = _softmax([v / T for v in s[b, c].flatten().tolist()])
            pt = _softmax([v / T for v in t[b, c].flatten().tolist()])
            total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    assert cwd_loss(s, t, T).item() == pytest.approx(T * T * total / 6, rel=1e-12)
    # a per-channel shift of either map changes no spatial softmax
    shift = _rand(2, 3, 1, 1, seed=3) * 10
    assert cwd_loss(s + shift, t - shift, T).item() == pytest.approx(cwd_loss(s, t, T).item(), rel=1e-10)
    assert cwd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-12)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: cwd_loss(x, t, 2.0), (s,))
    with pytest.raises(ValueError, match="differ"):
        cwd_loss(s, t[:, :2], T)


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)) + 1e-8)


def test_dist_is_inter_plus_intra_correlation_loss():
    s, t = _rand(2, 4, 2, 2, seed=4), _rand(2, 4, 2, 2, seed=5)
    rows_s = [_softmax(s[b, :, i, j].tolist()) for b in range(2) for i in range(2) for j in range(2)]
    rows_t = [_softmax(t[b, :, i, j].tolist()) for b in range(2) for i in range(2) for j in range(2)]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(rows_s, rows_t)) / len(rows_s)
    intra = 1 - sum(_pearson([r[k] for r in rows_s], [r[k] for r in rows_t]) for k in range(4)) / 4
    assert dist_loss(s, t).item() == pytest.approx(inter + intra, rel=1e-10)
    assert dist_loss(s, t, beta=2.0, gamma=0.5).item() == pytest.approx(2 * inter + 0.5 * intra, rel=1e-10)
    # softmax ignores a per-pixel shift of the logits
    assert dist_loss(s + _rand(2, 1, 2, 2, seed=6), t).item() == pytest.approx(dist_loss(s, t).item(), rel=1e-10)
    assert dist_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)  # only the 1e-8 in the denominators
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t), (s,))


def _ifvd_reference(fs, ft, lab, k, count_ignored):
    """Loops: per image and class, the mean feature; per labelled pixel, cos to its class mean."""
    b, _, h, w = fs.shape
    err, n_valid = 0.0, 0
    for i in range(b):
        protos = {}
        for f_name, f in (("s", fs), ("t", ft)):
            for c in range(k):
                pix = [(y, x) for y in range(h) for x in range(w) if lab[i, y, x] == c]
                if pix:
                    protos[f_name, c] = sum(f[i, :, y, x] for y, x in pix) / (len(pix) + 1e-6)
        for y in range(h):
            for x in range(w):
                c = int(lab[i, y, x])
                if c == 255:
                    continue
                n_valid += 1
                v = {}
                for f_name, f in (("s", fs), ("t", ft)):
                    u, m = f[i, :, y, x], protos[f_name, c]
                    v[f_name] = float(u @ m / (max(u.norm(), 1e-8) * max(m.norm(), 1e-8)))
                err += (v["s"] - v["t"]) ** 2
    return err / (b * h * w if count_ignored else n_valid)


def test_ifvd_matches_the_per_class_prototype_formula_with_labels_resized_by_nearest():
    fs, ft = _rand(2, 3, 3, 4, seed=7), _rand(2, 5, 3, 4, seed=8)  # channels may differ
    big = torch.randint(0, 3, (2, 6, 8), generator=torch.Generator().manual_seed(9))
    big[0, :2, :4] = 255
    small = big[:, ::2, ::2]  # what nearest resizing by 2 picks
    for count_ignored in (False, True):
        want = _ifvd_reference(fs, ft, small, 3, count_ignored)
        assert ifvd_loss(fs, ft, big, 3, count_ignored=count_ignored).item() == pytest.approx(want, rel=1e-9)
    # cosines: scaling either map changes nothing
    assert ifvd_loss(3 * fs, ft, big, 3).item() == pytest.approx(ifvd_loss(fs, ft, big, 3).item(), rel=1e-9)
    fs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ifvd_loss(x, ft, big, 3), (fs,))
    every = torch.full_like(big, 255)
    assert ifvd_loss(fs, ft, every, 3).item() == 0.0


def test_pairwise_is_the_mean_squared_difference_of_node_cosines_with_ceil_pooling():
    fs, ft = _rand(1, 2, 3, 3, seed=10), _rand(1, 4, 3, 3, seed=11)

    def nodes(f):  # 2x2 max pool, stride 2, ceil mode: a 3x3 map has 2x2 nodes
        out = []
        for y0 in (0, 2):
            for x0 in (0, 2):
                v = torch.stack([f[0, :, y, x] for y in range(y0, min(y0 + 2, 3)) for x in range(x0, min(x0 + 2, 3))]).max(0).values
                out.append(v / v.norm())
        return out

    ns, nt = nodes(fs), nodes(ft)
    want = sum(float(ns[i] @ ns[j] - nt[i] @ nt[j]) ** 2 for i in range(4) for j in range(4)) / 16
    assert pairwise_loss(fs, ft, pool=2).item() == pytest.approx(want, rel=1e-10)
    assert pairwise_loss(2 * fs, ft).item() == pytest.approx(pairwise_loss(fs, ft).item(), rel=1e-10)
    fs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: pairwise_loss(x, ft), (fs,))


def test_discriminator_scores_and_hinge_losses():
    d = Discriminator(5)
    assert d(torch.randn(2, 5, 64, 128)).shape == (2, 1, 1, 5)  # Cityscapes' 64x128 logit map
    with pytest.raises(RuntimeError):
        d(torch.randn(1, 5, 32, 32))  # below MIN_SIZE: the last 4x4 convolution has nothing to read
    spectral = [n for n, _ in d.named_buffers() if n.endswith("_u")]
    assert len(spectral) == 4  # the four strided convolutions are spectrally normalised
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_hinge(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert generator_hinge(fake).item() == pytest.approx(1.0)


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_cirkd_minibatch_is_the_mean_over_image_pairs_of_row_kl_of_pixel_similarities():
    from afdcd_bench.losses import cirkd_minibatch_loss

    s, t, tau = _rand(2, 3, 2, 2, seed=20), _rand(2, 3, 2, 2, seed=21), 0.5
    pix = lambda f, b: [_unit(f[b, :, i, j].tolist()) for i in range(2) for j in range(2)]
    total = 0.0
    for i in range(2):
        for j in range(2):
            rows = 0.0
            for sx, tx in zip(pix(s, i), pix(t, i)):
                ps = _softmax([sum(a * b for a, b in zip(sx, sy)) / tau for sy in pix(s, j)])
                pt = _softmax([sum(a * b for a, b in zip(tx, ty)) / tau for ty in pix(t, j)])
                rows += _kl(pt, ps)
            total += rows / 4
    assert cirkd_minibatch_loss(s, t, tau).item() == pytest.approx(total / 4, rel=1e-12)
    assert cirkd_minibatch_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)
    # unit-length pixel vectors: a per-pixel positive scale of the features changes nothing
    scale = _rand(2, 1, 2, 2, seed=22).abs() + 0.1
    assert cirkd_minibatch_loss(s * scale, t, tau).item() == pytest.approx(total / 4, rel=1e-10)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: cirkd_minibatch_loss(x, t, tau), (s,))
    with pytest.raises(ValueError, match="differ"):
        cirkd_minibatch_loss(s, t[:1])


def test_cirkd_memory_kl_is_the_per_anchor_kl_over_the_contrast_entries():
    from afdcd_bench.losses import cirkd_memory_kl

    s, t, bank = _rand(3, 4, seed=23), _rand(3, 4, seed=24), _rand(5, 4, seed=25)
    tau, T = 0.2, 2.0
    got = cirkd_memory_kl(s, t, bank, tau, T)
    for a in range(3):
        ps = _softmax([sum(x * y for x, y in zip(s[a].tolist(), q)) / (tau * T) for q in bank.tolist()])
        pt = _softmax([sum(x * y for x, y in zip(t[a].tolist(), q)) / (tau * T) for q in bank.tolist()])
        assert got[a].item() == pytest.approx(T * T * _kl(pt, ps), rel=1e-12)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: cirkd_memory_kl(x, t, bank, tau, T).sum(), (s,))


def test_similarity_losses_stay_fp32_under_bf16_autocast():
    """Mixed precision would round the similarity logits (at tau 0.1 up to 10) to bf16's 3 digits."""
    from afdcd_bench.losses import cirkd_memory_kl, cirkd_minibatch_loss
    from afdcd_bench.losses.maskd import maskd_loss, token_dice, token_masks

    f32 = lambda *shape, seed: _rand(*shape, seed=seed).float()
    s, t, bank = f32(6, 8, seed=30), f32(6, 8, seed=31), f32(40, 8, seed=32)
    fs, ft = f32(2, 8, 4, 4, seed=33), f32(2, 8, 4, 4, seed=34)
    zs, zt, w = f32(2, 5, 4, 4, seed=35), f32(2, 5, 4, 4, seed=36), f32(3, 5, seed=37)
    plain = [cirkd_memory_kl(s, t, bank), cirkd_minibatch_loss(fs, ft), maskd_loss(zs, zt, token_masks(zt, w)),
             token_dice(token_masks(zt, w))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = [cirkd_memory_kl(s, t, bank), cirkd_minibatch_loss(fs, ft), maskd_loss(zs, zt, token_masks(zt, w)),
                 token_dice(token_masks(zt, w))]
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32 and torch.equal(a, b)


def test_pairwise_pool_edges_defaults_and_messages():
    import inspect

    assert inspect.signature(pairwise_loss).parameters["pool"].default == 2
    fs, ft = _rand(1, 3, 2, 2, seed=1), _rand(1, 5, 2, 2, seed=2)
    # pool 1: every position is a node
    ns = [fs[0, :, y, x] / fs[0, :, y, x].norm() for y in range(2) for x in range(2)]
    nt = [ft[0, :, y, x] / ft[0, :, y, x].norm() for y in range(2) for x in range(2)]
    want = sum(float(ns[i] @ ns[j] - nt[i] @ nt[j]) ** 2 for i in range(4) for j in range(4)) / 16
    assert pairwise_loss(fs, ft, pool=1).item() == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="pool must be >= 1, got 0"):
        pairwise_loss(fs, ft, pool=0)
    with pytest.raises(ValueError, match=r"student and teacher maps give \(1, 4, 4\) vs \(1, 1, 1\) nodes"):
        pairwise_loss(_rand(1, 2, 4, 4), _rand(1, 2, 2, 2), pool=2)


def test_self_attention_by_hand():
    from afdcd_bench.losses.skd import SelfAttention

    torch.manual_seed(0)
    att = SelfAttention(16).double()
    with torch.no_grad():
        att.gamma.fill_(0.7)
    x = _rand(2, 16, 3, 4, seed=3)
    q, k, v = (F_conv1x1(x, m).flatten(2) for m in (att.query, att.key, att.value))  # (B, C', N)
    out = torch.empty_like(x)
    for b in range(2):
        weights = torch.softmax(q[b].T @ k[b], dim=1)  # row i: how position i attends to every j
        out[b] = (0.7 * (v[b] @ weights.T)).view(16, 3, 4) + x[b]
    assert torch.allclose(att(x), out)


def F_conv1x1(x, conv):
    return torch.nn.functional.conv2d(x, conv.weight, conv.bias)


def test_discriminator_blocks_are_the_released_ones_and_take_half_precision_logits():
    d = Discriminator(5)
    for block in (d.block1, d.block2, d.block3, d.block4):
        conv, act = block
        assert conv.stride == (2, 2) and conv.kernel_size == (4, 4) and conv.padding == (1, 1)
        assert isinstance(act, torch.nn.LeakyReLU) and act.negative_slope == 0.1
    out = d(torch.randn(1, 5, 64, 64).bfloat16())  # logits under autocast: scored in the discriminator's dtype
    assert out.dtype == torch.float32 and out.shape == (1, 1, 1, 1)


def test_ifvd_defaults_shape_messages_and_labels_outside_the_classes():
    import inspect

    params = inspect.signature(ifvd_loss).parameters
    assert params["count_ignored"].default is False and params["ignore_index"].default == 255
    fs, ft = _rand(2, 3, 4, 4, seed=4), _rand(2, 5, 4, 4, seed=5)
    with pytest.raises(ValueError, match=r"ifvd_loss: student \(2, 3, 4, 4\) and teacher \(1, 5, 4, 4\) maps differ"):
        ifvd_loss(fs, _rand(1, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), 4)
    labels = torch.randint(0, 4, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    base = ifvd_loss(fs, ft, labels, 4)
    # labels 4 (= num_classes) and 9 are outside the classes: not counted, like the ignore label
    for outside in (4, 9, 255):
        odd = labels.clone()
        odd[0, 0, 0] = outside
        trimmed = labels.clone()
        trimmed[0, 0, 0] = 255
        assert ifvd_loss(fs, ft, odd, 4).item() == pytest.approx(ifvd_loss(fs, ft, trimmed, 4).item(), rel=1e-12)
    assert base.item() > 0


def test_cirkd_defaults_messages_and_the_temperature_squared():
    import inspect

    from afdcd_bench.losses.cirkd import cirkd_memory_kl, cirkd_minibatch_loss

    assert inspect.signature(cirkd_minibatch_loss).parameters["tau"].default == 0.1
    memory = inspect.signature(cirkd_memory_kl).parameters
    assert (memory["tau"].default, memory["temperature"].default) == (0.1, 1.0)
    x = _rand(1, 4, 2, 2)
    with pytest.raises(ValueError, match="tau must be > 0, got 0"):
        cirkd_minibatch_loss(x, x, tau=0)
    with pytest.raises(ValueError, match=r"anchors \(3, 4\) / \(2, 4\) and contrasts \(5, 4\) differ in width"):
        cirkd_memory_kl(_rand(3, 4), _rand(2, 4), _rand(5, 4))
    with pytest.raises(ValueError, match=r"anchors \(3, 4\) / \(3, 4\) and contrasts \(5, 6\) differ in width"):
        cirkd_memory_kl(_rand(3, 4), _rand(3, 4), _rand(5, 6))
    s, t, q = _rand(3, 4, seed=1), _rand(3, 4, seed=2), _rand(5, 4, seed=3)
    got = cirkd_memory_kl(s, t, q, tau=0.5, temperature=3.0)
    for a in range(3):
        ps = _softmax([float(s[a] @ q[m]) / 1.5 for m in range(5)])
        pt = _softmax([float(t[a] @ q[m]) / 1.5 for m in range(5)])
        assert got[a].item() == pytest.approx(9 * _kl(pt, ps), rel=1e-9)


def test_maskd_token_dice_of_one_and_two_tokens_and_shape_messages():
    from afdcd_bench.losses.maskd import maskd_loss, token_dice, token_masks

    one = torch.rand(2, 1, 3, 3, dtype=D64)
    assert token_dice(one).item() == 0.0  # a single token overlaps nothing
    two = torch.rand(2, 2, 3, 3, dtype=D64, generator=torch.Generator().manual_seed(1))
    want = []
    for b in range(2):
        m0, m1 = two[b, 0].flatten(), two[b, 1].flatten()
        want.append(2 * float(m0 @ m1) / (float(m0 @ m0) + 1e-12 + float(m1 @ m1) + 1e-12))
    assert token_dice(two).item() == pytest.approx(sum(want) / 2, rel=1e-9)
    with pytest.raises(ValueError, match="tokens of 5 classes for logits of 3"):
        token_masks(torch.zeros(1, 3, 4, 6), torch.zeros(2, 5))
    z = torch.zeros(1, 3, 4, 6)
    with pytest.raises(ValueError, match=r"maskd_loss: student \(1, 3, 4, 6\), teacher \(1, 2, 4, 6\) and masks \(1, 2, 4, 6\) differ"):
        maskd_loss(z, torch.zeros(1, 2, 4, 6), torch.zeros(1, 2, 4, 6))
    with pytest.raises(ValueError, match=r"and masks \(1, 2, 4, 5\) differ"):
        maskd_loss(z, z, torch.zeros(1, 2, 4, 5))


def test_called_without_them_the_competitors_losses_use_their_documented_defaults():
    """mutmut keeps a function's signature, so a default is pinned by calling without it."""
    from afdcd_bench.losses.cirkd import cirkd_memory_kl, cirkd_minibatch_loss

    fs, ft = _rand(2, 3, 4, 4, seed=6), _rand(2, 5, 4, 4, seed=7)
    assert pairwise_loss(fs, ft).item() == pairwise_loss(fs, ft, pool=2).item() != pairwise_loss(fs, ft, pool=1).item()
    s, t, q = _rand(3, 4, seed=8), _rand(3, 4, seed=9), _rand(5, 4, seed=10)
    assert torch.equal(cirkd_memory_kl(s, t, q), cirkd_memory_kl(s, t, q, tau=0.1, temperature=1.0))
    assert not torch.equal(cirkd_memory_kl(s, t, q), cirkd_memory_kl(s, t, q, tau=0.1, temperature=2.0))
    x, y = _rand(2, 3, 2, 2, seed=11), _rand(2, 3, 2, 2, seed=12)
    assert cirkd_minibatch_loss(x, y).item() == cirkd_minibatch_loss(x, y, tau=0.1).item() != cirkd_minibatch_loss(x, y, tau=1.1).item()
    labels = torch.randint(0, 4, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    labels[0, :2] = 255  # ignored pixels: only the mean's denominator depends on count_ignored
    assert ifvd_loss(fs, ft, labels, 4).item() == ifvd_loss(fs, ft, labels, 4, count_ignored=False).item()
    assert ifvd_loss(fs, ft, labels, 4).item() != ifvd_loss(fs, ft, labels, 4, count_ignored=True).item()


def test_released_spectral_norm_runs_v_then_u_at_every_forward_and_finds_the_top_singular_value():
    from afdcd_bench.losses.skd import ReleasedSpectralNormConv

    torch.manual_seed(3)
    conv = ReleasedSpectralNormConv(3, 6, 4, stride=2, padding=1).double()
    torch.manual_seed(3)  # torch's parametrization draws u then v from the same state
    ref = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Conv2d(3, 6, 4, stride=2, padding=1))
    torch.manual_seed(3)
    torch.nn.Conv2d(3, 6, 4, stride=2, padding=1)
    draws = torch.randn(6), torch.randn(48)
    u0, v0 = (torch.nn.functional.normalize(d.double(), dim=0) for d in draws)
    assert torch.allclose(conv._u, u0) and torch.allclose(conv._v, v0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mat = conv.weight.detach().flatten(1)
    v1 = torch.nn.functional.normalize(mat.t() @ u0, dim=0)  # v from u first (the release's order)
    u1 = torch.nn.functional.normalize(mat @ v1, dim=0)
    sigma = float(u1 @ mat @ v1)
    want = torch.nn.functional.conv2d(x, conv.weight / sigma, conv.bias, stride=2, padding=1)
    conv.eval()  # the release iterates in eval mode too
    assert torch.allclose(conv(x), want)
    assert torch.allclose(conv._u, u1) and torch.allclose(conv._v, v1)
    conv.train()
    for _ in range(200):
        conv(x)
    top = torch.linalg.svdvals(mat)[0]
    assert float(conv._u @ mat @ conv._v) == pytest.approx(float(top), rel=1e-6)
    assert ref.parametrizations.weight.original.shape == conv.weight.shape  # the same layer, another estimate


def test_discriminator_spectral_norm_choice():
    torch.manual_seed(0)
    released = Discriminator(5)
    torch.manual_seed(0)
    torched = Discriminator(5, spectral_norm="torch")
    x = torch.randn(1, 5, 64, 64)
    # the same weights (the same draws in the same order), another sigma estimate at the first step
    assert torch.equal(released.block2[0].weight, torched.block2[0].parametrizations.weight.original)
    assert not torch.allclose(released(x), torched(x))
    with pytest.raises(ValueError, match="spectral_norm must be one of"):
        Discriminator(5, spectral_norm="sagan")
