import math

import pytest
import torch
import torch.nn.functional as F

from afdcd_bench.losses import AfDCDLoss, center_mask, contrastive_loss, kd_loss, task_loss


def test_afdcd_loss_terms_by_hand():
    torch.manual_seed(0)
    loss = AfDCDLoss(8, 16, groups=4, patch=(2, 2), pool=2, tau=0.1).double()
    s, t = torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 16, 8, 8, dtype=torch.float64)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).double()
    fd, ctr = loss(s, t, mask=mask)
    projected = loss.projector(loss.align(s) * mask)
    assert fd.item() == pytest.approx(((projected - t) ** 2).sum().item() / 2, rel=1e-12)
    want = contrastive_loss(F.max_pool2d(projected, 2), F.max_pool2d(t, 2), groups=4, patch=(2, 2), tau=0.1)
    assert ctr.item() == pytest.approx(want.item(), rel=1e-12)


def test_equal_widths_use_identity_align_and_gradients_reach_student():
    loss = AfDCDLoss(16, 16, groups=4, patch=(2, 2), pool=0)
    assert isinstance(loss.align, torch.nn.Identity)
    s = torch.randn(1, 16, 4, 4, requires_grad=True)
    t = torch.randn(1, 16, 4, 4, requires_grad=True)
    fd, ctr = loss(s, t)
    (fd + ctr).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher map is a target


def test_camvid_crop_and_center_mask():
    loss = AfDCDLoss(4, 16, groups=4, pool=0, mask="center")
    s, t = torch.randn(1, 4, 45, 45), torch.randn(1, 16, 45, 45)
    fd, ctr = loss(s, t)  # 45x45 -> top-left 44x44, no error
    assert torch.isfinite(ctr)
    m = center_mask(1, 45, 45)
    assert m[0, 0, 15:30, 15:30].sum() == 0 and m.sum() == 45 * 45 - 15 * 15
    p = loss.projector(loss.align(s) * m)
    want = contrastive_loss(p[..., :44, :44], t[..., :44, :44], groups=4)
    assert ctr.item() == pytest.approx(want.item(), rel=1e-5)


def test_random_mask_ratio_and_determinism():
    loss = AfDCDLoss(4, 16, groups=4, pool=0, mask_ratio=0.75)
    m = loss.make_mask(torch.zeros(64, 16, 32, 32))
    assert abs(1 - m.mean().item() - 0.75) < 0.01
    s, t = torch.randn(1, 4, 8, 8), torch.randn(1, 16, 8, 8)
    keep = torch.ones(1, 1, 8, 8)
    assert loss(s, t, mask=keep) == loss(s, t, mask=keep)


def test_enhanced_projector_and_options_by_name():
    loss = AfDCDLoss(8, 16, mode="spatial", groups=4, patch=(2, 2), pool=0, distance="l2", projector="enhanced")
    assert len(list(loss.projector.parameters())) == 8
    fd, ctr = loss(torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4, 4))
    assert torch.isfinite(fd) and torch.isfinite(ctr)
    for bad in ({"mask": "grid"}, {"projector": "mlp"}, {"mode": "x"}, {"pool": -1}, {"mask_ratio": 1.0}, {"backend": "jit"}):
        with pytest.raises(ValueError):
            AfDCDLoss(8, 16, **bad)
    with pytest.raises(ValueError, match="multiple of groups"):
        AfDCDLoss(8, 20, groups=16)


def test_recipe_backend_reaches_the_loss_and_gives_the_same_terms():
    from afdcd_bench.config import load_recipe
    from afdcd_bench.methods import BuildContext, build_method

    cfg = load_recipe("demo/afdcd", ["method.afdcd.backend=compiled"])
    method = build_method(cfg.method, BuildContext({"logits": 11, "features": 32}, {"logits": 11, "features": 64}, 11))
    loss = method.parts["afdcd"].feature_loss
    assert loss.backend == "compiled"
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 64, 8, 8, generator=g)
    mask = loss.make_mask(t)
    compiled = loss(s, t, mask)
    loss.backend = "eager"
    eager = loss(s, t, mask)
    assert torch.equal(compiled.fd, eager.fd)
    assert compiled.ctr.item() == pytest.approx(eager.ctr.item(), rel=1e-5)


def test_kd_loss_matches_kl_definition():
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    T = 2.0
    p_t = F.softmax(t / T, 1)
    want = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(want.item(), rel=1e-6)
    assert kd_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        kd_loss(s, t[..., :2])


def test_task_loss_ignore_and_aux_weight():
    torch.manual_seed(2)
    logits, aux = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 8, 8))
    labels[0, 0] = 255
    up = lambda x: F.interpolate(x, (8, 8), mode="bilinear", align_corners=True)  # noqa: E731
    want = F.cross_entropy(up(logits), labels, ignore_index=255) + 0.4 * F.cross_entropy(up(aux), labels, ignore_index=255)
    assert task_loss(logits, labels, aux).item() == pytest.approx(want.item(), rel=1e-6)
    all_ignored = torch.full((1, 8, 8), 255)
    assert task_loss(logits, all_ignored).item() == 0.0
    assert not math.isnan(task_loss(logits, all_ignored).item())


def test_loss_defaults_are_the_documented_ones():
    """The defaults the recipes and docs rely on (docs/method.md, docs/distillers.md)."""
    import inspect

    from afdcd_bench.losses import cwd_loss, dist_loss, kd_loss, task_loss
    from afdcd_bench.losses.task import IGNORE_INDEX, segmentation_ce

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}

    assert defaults(kd_loss) == {"temperature": 1.0}
    assert defaults(cwd_loss) == {"temperature": 4.0}
    assert defaults(dist_loss) == {"beta": 1.0, "gamma": 1.0, "sum_across": None}
    assert defaults(task_loss) == {"aux_logits": None, "aux_weight": 0.4, "ignore_index": 255}
    assert defaults(segmentation_ce) == {"ignore_index": 255} and IGNORE_INDEX == 255


def test_half_precision_inputs_are_computed_in_fp32():
    from afdcd_bench.losses.task import as_float

    for dtype in (torch.bfloat16, torch.float16):
        assert as_float(torch.zeros(2, dtype=dtype)).dtype == torch.float32
    assert as_float(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


def test_task_loss_honours_another_ignore_label_in_both_terms():
    from afdcd_bench.losses import task_loss

    g = torch.Generator().manual_seed(0)
    logits, aux = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (1, 4, 4), generator=g)
    labels[0, 0] = 0
    keep = labels != 0

    def ce(x):
        return torch.nn.functional.cross_entropy(x.permute(0, 2, 3, 1)[keep], labels[keep])

    assert task_loss(logits, labels, aux, 0.4, ignore_index=0) == pytest.approx(float(ce(logits) + 0.4 * ce(aux)), rel=1e-6)


@pytest.mark.parametrize("name", ["kd_loss", "cwd_loss"])
def test_temperatures_must_be_positive_and_shapes_must_match(name):
    import afdcd_bench.losses as losses

    fn = getattr(losses, name)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.isfinite(fn(s, t, temperature=1.0)) and torch.isfinite(fn(s, t, temperature=0.5))
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got 0$"):
        fn(s, t, temperature=0)
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got -1$"):
        fn(s, t, temperature=-1)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 5, 4, 4\)"):
        fn(s, torch.randn(2, 5, 4, 4), temperature=1.0)


def test_shape_messages_name_both_shapes():
    from afdcd_bench.losses import cwd_loss, dist_loss, kd_loss

    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"^student and teacher logits differ in shape: \(2, 3, 4, 4\) vs \(2, 5, 4, 4\) \(same classes and stride expected\)$"):
        kd_loss(a, b)
    with pytest.raises(ValueError, match=r"^dist_loss: student \(2, 3, 4, 4\) and teacher \(2, 5, 4, 4\) logits differ$"):
        dist_loss(a, b)
    with pytest.raises(ValueError, match=r"^cwd_loss: student \(2, 3, 4, 4\) and teacher \(2, 5, 4, 4\) differ \(align the student's channels first\)$"):
        cwd_loss(a, b)


def test_called_without_a_temperature_the_losses_use_their_documented_one():
    """Through the call, not the signature: a default changed inside the function must show."""
    from afdcd_bench.losses import cwd_loss

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    p_t = F.softmax(t, dim=1)
    by_hand = (p_t * (F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1))).sum(1).mean()  # T = 1
    assert float(kd_loss(s, t)) == pytest.approx(float(by_hand), rel=1e-6)
    assert float(cwd_loss(s, t)) == pytest.approx(float(cwd_loss(s, t, temperature=4.0)), rel=1e-12)
    assert float(cwd_loss(s, t)) != pytest.approx(float(cwd_loss(s, t, temperature=5.0)), rel=1e-3)


def _conv(x, conv):
    return F.conv2d(x, conv.weight, conv.bias, padding=1)


def test_the_projectors_compute_what_the_paper_draws():
    """basic: conv3x3 -> ReLU -> conv3x3; enhanced: two conv3x3+ReLU blocks in series, each read out
    by its own conv3x3, the two read-outs averaged (docs/method.md), by hand from their weights."""
    from afdcd_bench.losses.afdcd import build_projector

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    basic = build_projector("basic", 6).double()
    assert torch.allclose(basic(x), _conv(F.relu(_conv(x, basic[0])), basic[2]))
    enhanced = build_projector("enhanced", 6).double()
    h1 = F.relu(_conv(x, enhanced.block_1[0]))
    h2 = F.relu(_conv(h1, enhanced.block_2[0]))
    assert torch.allclose(enhanced(x), (_conv(h1, enhanced.adaptor_1) + _conv(h2, enhanced.adaptor_2)) / 2)
    with pytest.raises(ValueError, match=r"unknown projector 'mlp'; expected one of \('basic', 'enhanced'\)"):
        build_projector("mlp", 6)


@pytest.mark.parametrize("shape,patch,want", [((1, 1, 5, 7), (2, 3), (4, 6)), ((1, 1, 4, 6), (2, 3), (4, 6)),
                                              ((1, 1, 45, 45), (4, 4), (44, 44))])
def test_maps_are_cropped_top_left_to_whole_patches(shape, patch, want):
    from afdcd_bench.losses.afdcd import crop_to_patch_multiple

    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    out = crop_to_patch_multiple(x, patch)
    assert tuple(out.shape[-2:]) == want and torch.equal(out, x[..., :want[0], :want[1]])


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (1, 1, 8, 2), (1, 1, 1, 1)])
def test_a_map_smaller_than_one_patch_is_refused(shape):
    from afdcd_bench.losses.afdcd import crop_to_patch_multiple

    with pytest.raises(ValueError, match=rf"feature map {shape[2]}x{shape[3]} is smaller than one 2x3 patch"):
        crop_to_patch_multiple(torch.zeros(shape), (2, 3))


def test_afdcd_options_are_checked_with_their_message_and_edges_accepted():
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(AfDCDLoss).parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"mode": "omni", "groups": 16, "patch": (4, 4), "pool": 4, "tau": 0.07, "distance": "l1", "mask": "random",
                        "mask_ratio": 0.75, "projector": "basic", "backend": "eager"}
    assert AfDCDLoss(8, 16, groups=4, patch=(2, 3)).patch == (2, 3)
    assert AfDCDLoss(8, 16, groups=4, mask_ratio=0.0).mask_ratio == 0.0  # no masking: plain mimicking
    for bad, message in [({"mask": "grid"}, r"unknown mask 'grid'; expected one of \('random', 'center'\)"),
                         ({"mask_ratio": 1.0}, r"mask_ratio must be in \[0, 1\), got 1.0"),
                         ({"pool": -1}, r"pool must be >= 0 \(0 = no pooling\), got -1"),
                         ({"mode": "channel", "groups": 3}, "teacher_channels=16 is not a multiple of groups=3")]:
        with pytest.raises(ValueError, match=message):
            AfDCDLoss(8, 16, **{"groups": 4, **bad})
    AfDCDLoss(8, 16, mode="spatial", groups=3)  # spatial contrasting has no channel groups


def test_mimic_names_the_shapes_it_cannot_use():
    loss = AfDCDLoss(8, 16, groups=4, pool=0)
    with pytest.raises(ValueError, match=r"aligned student map \(1, 16, 4, 4\) does not match teacher map \(1, 16, 8, 8\)"):
        loss(torch.randn(1, 8, 4, 4), torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match=r"mask must be \(B, 1, H, W\) = \(2, 1, 4, 6\), got \(2, 4, 6\)"):
        loss(torch.randn(2, 8, 4, 6), torch.randn(2, 16, 4, 6), mask=torch.ones(2, 4, 6))


def test_a_float32_mask_on_a_bfloat16_loss_is_cast_to_the_map():
    loss = AfDCDLoss(8, 16, groups=4, patch=(2, 2), pool=0).to(torch.bfloat16)
    s, t = torch.randn(1, 8, 4, 4, dtype=torch.bfloat16), torch.randn(1, 16, 4, 4, dtype=torch.bfloat16)
    fd, projected = loss.mimic(s, t, mask=torch.ones(1, 1, 4, 4))  # (CPU cdist has no bfloat16: the mimicking alone)
    assert fd.dtype == projected.dtype == torch.bfloat16 and torch.isfinite(fd)


def test_channel_contrasting_uses_the_whole_map_uncropped():
    torch.manual_seed(1)
    loss = AfDCDLoss(8, 16, mode="channel", groups=4, patch=(4, 4), pool=0).double()
    s, t = torch.randn(1, 8, 5, 5, dtype=torch.float64), torch.randn(1, 16, 5, 5, dtype=torch.float64)
    keep = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    _, ctr = loss(s, t, mask=keep)
    p = loss.projector(loss.align(s))
    assert ctr.item() == pytest.approx(contrastive_loss(p, t, mode="channel", groups=4).item(), rel=1e-12)


def test_the_compiled_backend_is_handed_to_the_contrastive_term(monkeypatch):
    import afdcd_bench.losses.contrastive as c

    compiled = []
    monkeypatch.setattr(c, "_compiled_sum", lambda: compiled.append(True) or c._sample_sum)
    loss = AfDCDLoss(8, 16, groups=4, patch=(2, 2), pool=0, backend="compiled")
    loss(torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4, 4))
    assert compiled == [True]


def test_afdcd_called_without_them_uses_16_groups_and_a_4x4_pool():
    """mutmut keeps a function's signature, so a default is pinned by what the built loss holds."""
    loss = AfDCDLoss(8, 32)
    assert (loss.groups, loss.pool, loss.patch, loss.tau, loss.mask_ratio) == (16, 4, (4, 4), 0.07, 0.75)


def test_fitnet_loss_is_the_mean_squared_difference_over_every_element_in_fp32():
    from afdcd_bench.losses import fitnet_loss

    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 6, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 6, 4, 5, generator=g, dtype=torch.float64)
    by_hand = sum(float(a - b) ** 2 for a, b in zip(s.detach().flatten(), t.flatten())) / s.numel()
    assert fitnet_loss(s, t).item() == pytest.approx(by_hand, rel=1e-12)
    fitnet_loss(s, t.requires_grad_()).backward()
    assert t.grad is None  # the teacher's map is a target
    assert torch.allclose(s.grad, 2 * (s - t).detach() / s.numel())
    half = fitnet_loss(s.detach().bfloat16(), t.detach().bfloat16())
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match=r"fitnet_loss: the aligned student map \(2, 6, 4, 5\) and the teacher's \(2, 6, 4, 4\) differ"):
        fitnet_loss(s, t[..., :4])
