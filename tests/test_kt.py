"""KT's terms against a line-by-line transcription of the release's training step (seok-hwa/KT
train_KT.py and losses/KT.py at 709743f): its loops over images and classes with in-place clamps,
its CriterionKT (softmax, then .log()), its per-image feature tailoring and torch's triplet loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afdcd_bench.losses.kt import Tailoring, class_masks, kt_feature_terms, kt_logit_tailoring_loss, tailor_logits
from afdcd_bench.methods import METHODS, BuildContext
from afdcd_bench.models import SegmentorOutput

K, T = 3, 4.0


def release_criterion(s, t, temperature=T):
    """CriterionKT(norm_type='channel', divergence='kl'): softmax over positions, .log() on the student."""
    n, c = s.shape[:2]
    norm_s = (s.reshape(n, c, -1) / temperature).softmax(dim=-1).log()
    norm_t = (t.detach().reshape(n, c, -1) / temperature).softmax(dim=-1)
    return F.kl_div(norm_s, norm_t, reduction="sum") / (n * c) * temperature ** 2


def release_lt(z_s, z_t, labels, ignore=255):
    target_mask = labels.clone()
    target_mask[target_mask == ignore] = K
    one_hot = torch.zeros((labels.shape[0], K + 1) + labels.shape[1:], dtype=torch.long, device=labels.device)
    class_mask = one_hot.scatter_(1, target_mask.unsqueeze(1), 1)[:, :K]
    non_class_mask = -(class_mask - 1)
    tc = F.interpolate(z_t, labels.shape[1:], mode="nearest")
    st = F.interpolate(z_s, labels.shape[1:], mode="nearest")
    tc_c, tc_n, st_c, st_n = tc * class_mask, tc * non_class_mask, st * class_mask, st * non_class_mask
    for i in range(tc_c.shape[0]):
        for j in range(tc_c.shape[1]):
            tm = tc_c[i][j][tc_c[i][j] > 0].mean()
            sm = st_c[i][j][st_c[i][j] > 0].mean()
            ntm = tc_n[i][j].mean()
            nsm = st_n[i][j].mean()
            tc_c[i][j][tc_c[i][j] < tm] = tm
            st_c[i][j][st_c[i][j] < sm] = sm
            tc_n[i][j][tc_n[i][j] > ntm] = ntm
            st_n[i][j][st_n[i][j] > nsm] = nsm
    tc_c, st_c = tc_c * class_mask, st_c * class_mask
    tc_n, st_n = tc_n * non_class_mask, st_n * non_class_mask
    return release_criterion(st, tc_c + tc_n) + release_criterion(st_c, tc_c) + release_criterion(st_n, tc_n)


def _logits_and_labels(seed=0):
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(2, K, 4, 4, generator=g, dtype=torch.float64)
    z_t = torch.randn(2, K, 4, 4, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, K, (2, 16, 16), generator=g)
    labels[:, :3] = 255  # ignored rows: in no class
    labels[1][labels[1] == 2] = 0  # image 1 has no pixel of class 2: its mean of positives is the release's NaN
    z_t[0, 1] = -z_t[0, 1].abs() - 0.1  # class 1 of image 0: no positive teacher entry either
    return z_s, z_t, labels


def test_logit_tailoring_equals_the_release_loop_in_value_and_gradient():
    z_s, z_t, labels = _logits_and_labels()
    a = z_s.clone().requires_grad_(True)
    b = z_s.clone().requires_grad_(True)
    ours = kt_logit_tailoring_loss(a, z_t, labels, K, T)
    theirs = release_lt(b, z_t, labels)
    assert torch.isfinite(ours)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-10)
    ours.backward()
    theirs.backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)  # the means carry gradient, as the in-place clamps do


def test_tailored_maps_clamp_inside_and_outside_each_class():
    z = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])  # one image, one class
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])
    p, n = tailor_logits(z, mask)
    mu_pos = (2.0 + 3.0) / 2  # positives on the class's pixels only
    assert torch.equal(p, torch.tensor([[[[2.5, 2.5], [0.0, 3.0]]]]))
    mu_neg = 0.5 / 4  # off the class, over all four pixels (the class's zeros included)
    assert torch.allclose(n, torch.tensor([[[[0.0, 0.0], [mu_neg, 0.0]]]]))
    assert mu_pos == 2.5
    labels = torch.tensor([[[0, 255], [7, 1]]])
    assert class_masks(labels, 2).tolist() == [[[[1, 0], [0, 0]], [[0, 0], [0, 1]]]]


def release_features(fs, ft, student_tailored, st_tail, tc_tail, st_conv):
    """train_KT.py's feature tailoring and its FT / triplet criteria, one image at a time."""
    t_n, t_c, t_h, t_w = ft.shape
    s_c = fs.shape[1]
    highs, lows = [], []
    for tcf, stf in zip(ft, fs):
        tcn = F.normalize(tcf.reshape(t_c, -1), dim=1)
        stn = F.normalize(stf.reshape(s_c, -1), dim=1)
        if student_tailored:
            corr = tcn.matmul(stn.t())
            highs.append(corr.matmul(stf.reshape(s_c, -1)).reshape(t_c, t_h, t_w)[None])
            lows.append((1 - corr).matmul(stf.reshape(s_c, -1)).reshape(t_c, t_h, t_w)[None])
        else:
            corr = stn.matmul(tcn.t())
            highs.append(corr.matmul(tcf.reshape(t_c, -1)).reshape(s_c, t_h, t_w)[None])
            lows.append((1 - corr).matmul(tcf.reshape(t_c, -1)).reshape(s_c, t_h, t_w)[None])
    triplet = torch.nn.TripletMarginLoss(margin=1.0, p=2, eps=1e-7)
    if student_tailored:
        high, low = st_tail(torch.cat(highs)), st_tail(torch.cat(lows))
        return release_criterion(high, ft), triplet(st_conv(fs), high, low)
    high, low = tc_tail(torch.cat(highs)), tc_tail(torch.cat(lows))
    return release_criterion(fs, high), triplet(fs, high, low)


@pytest.mark.parametrize("student_tailored", [True, False])
def test_feature_tailoring_and_triplet_equal_the_release_in_value_and_gradient(student_tailored):
    torch.manual_seed(0)
    fs = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    ft = torch.randn(2, 10, 4, 5, dtype=torch.float64)
    st_tail, tc_tail = Tailoring(10, 5).double(), Tailoring(6, 3).double()
    st_conv = torch.nn.Conv2d(6, 10, 1, bias=False).double()
    a, b = fs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    ft_ours, tri_ours = kt_feature_terms(a, ft, student_tailored, st_tail, tc_tail, st_conv, T)
    ft_rel, tri_rel = release_features(b, ft, student_tailored, st_tail, tc_tail, st_conv)
    assert float(ft_ours) == pytest.approx(float(ft_rel), rel=1e-10)
    assert float(tri_ours) == pytest.approx(float(tri_rel), rel=1e-10)
    (ft_ours + 2 * tri_ours).backward()
    (ft_rel + 2 * tri_rel).backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def _kt(options=None, iterations=40000):
    ctx = BuildContext(student={"logits": K, "aux_logits": K, "features": 8, "c3": None, "head": 6},
                       teacher={"logits": K, "aux_logits": K, "features": 16, "c3": None, "head": 10},
                       num_classes=K, crop_size=(16, 16), iterations=iterations)
    cls = METHODS["kt"]
    return cls(cls.Options(**(options or {})), ctx)


def test_released_kt_keeps_its_tailoring_modules_untrained_and_switches_a_quarter_in():
    m = _kt(iterations=40)
    assert m.switch_step == 10  # the release's 10,000 of 40,000
    assert not any(p.requires_grad for p in m.parameters())  # never in the student's optimiser
    assert m.tailor_student.layers[0].weight.shape == (5, 10, 1, 1) and m.tailor_teacher.layers[0].weight.shape == (3, 6, 1, 1)
    assert m.anchor.weight.shape == (10, 6, 1, 1) and m.anchor.bias is None
    sides = []
    for _ in range(12):
        sides.append(m.student_tailored())
        m.after_step()
    assert sides == [True] * 9 + [False] * 3  # iterations 1..9 tailor the student, 10.. the teacher
    state = m.state_dict()
    assert int(state["steps_done"]) == 12
    fresh = _kt(iterations=40)
    fresh.load_state_dict(state)  # a resumed run continues on the same side, with the same random modules
    assert not fresh.student_tailored() and torch.equal(fresh.anchor.weight, m.anchor.weight)
    trained = _kt({"train_tailoring": True})
    assert all(p.requires_grad for p in trained.parameters()) and trained.switch_step == 10000


def test_kt_terms_on_network_outputs_and_option_checks():
    from afdcd_bench.config import load_recipe
    from afdcd_bench.config.schema import ConfigError

    m = _kt(iterations=40)
    g = torch.Generator().manual_seed(2)
    s = SegmentorOutput(logits=torch.randn(2, K, 2, 2, generator=g, requires_grad=True), aux_logits=None,
                        features=torch.randn(2, 8, 2, 2, generator=g), head=torch.randn(2, 6, 2, 2, generator=g, requires_grad=True))
    t = SegmentorOutput(logits=torch.randn(2, K, 2, 2, generator=g), aux_logits=torch.randn(2, K, 2, 2, generator=g),
                        features=torch.randn(2, 16, 2, 2, generator=g), head=torch.randn(2, 10, 2, 2, generator=g))
    labels = torch.randint(0, K, (2, 16, 16), generator=g)
    terms = m(s, t, labels)
    assert sorted(terms) == ["kt_ft", "kt_kd", "kt_lt", "kt_triplet"]  # no aux logits on the student: no aux term
    assert all(torch.isfinite(v) and v.requires_grad for v in terms.values())
    cls = METHODS["kt"]
    cfg = load_recipe("demo/kd")
    with pytest.raises(ConfigError, match=r"method.kt.switch_fraction must be in \[0, 1\), got 1.0"):
        cls.check_recipe(cls.Options(switch_fraction=1.0), cfg, "method.kt")
    with pytest.raises(ConfigError, match="method.kt.temperature must be > 0"):
        cls.check_recipe(cls.Options(temperature=0.0), cfg, "method.kt")
