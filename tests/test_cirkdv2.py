"""CIRKDv2's terms against the release's equations written out here, its channel queue, and its
context block (methods/cirkdv2.py, losses/cirkd.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from afdcd_bench.config import ConfigError, load_recipe
from afdcd_bench.losses import channel_vectors, cirkd_channel_batch_loss, cirkd_memory_kl
from afdcd_bench.methods import BuildContext, build_method
from afdcd_bench.methods._channel_queue import ChannelQueue
from afdcd_bench.methods.cirkdv2 import ContextBlock
from afdcd_bench.models import build_segmentor


def _pooled_unit(x, pool):
    # the release: AvgPool2d(4, 4, ceil_mode=True), view(B, C, -1), normalize over the last dim
    return F.normalize(torch.nn.AvgPool2d(pool, pool, ceil_mode=True)(x).view(x.shape[0], x.shape[1], -1), p=2, dim=-1)


def test_channel_batch_term_is_the_release_double_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 6, 9, 7, generator=g), torch.randn(3, 6, 9, 7, generator=g)
    fs, ft = _pooled_unit(s, 4), _pooled_unit(t, 4)
    assert torch.allclose(channel_vectors(s, 4), fs, atol=1e-7)
    tau, total = 0.3, 0.0
    for i in range(3):
        for j in range(3):
            p_s = F.log_softmax(fs[i] @ fs[j].T / tau, dim=1)
            p_t = F.softmax(ft[i] @ ft[j].T / tau, dim=1)
            total = total + F.kl_div(p_s, p_t, reduction="batchmean")
    assert torch.allclose(cirkd_channel_batch_loss(fs, ft, tau), total / 9, rtol=1e-5, atol=1e-6)
    assert torch.equal(cirkd_channel_batch_loss(fs, ft), cirkd_channel_batch_loss(fs, ft, 0.1))  # the release's tau
    with pytest.raises(ValueError, match=r"student \(3, 6, 6\) and teacher \(3, 5, 6\) channel vectors differ"):
        cirkd_channel_batch_loss(fs, ft[:, :5], tau)


def test_channel_memory_term_is_the_release_kl():
    g = torch.Generator().manual_seed(1)
    s, t = F.normalize(torch.randn(12, 10, generator=g), dim=1), F.normalize(torch.randn(12, 10, generator=g), dim=1)
    bank = F.normalize(torch.randn(30, 10, generator=g), dim=1)
    tau, temp = 0.1, 2.0
    p_s = F.log_softmax(s @ bank.T / tau / temp, dim=1)
    p_t = F.softmax(t @ bank.T / tau / temp, dim=1)
    expected = F.kl_div(p_s, p_t, reduction="batchmean") * temp ** 2
    assert torch.allclose(cirkd_memory_kl(s, t, bank, tau, temp).mean(), expected, rtol=1e-5)


def test_context_block_is_attention_over_positions_fused_with_its_input():
    torch.manual_seed(0)
    block = ContextBlock(8).eval()
    x = torch.randn(2, 8, 5, 3)
    q = torch.einsum("oc,bchw->bohw", block.query.weight[:, :, 0, 0], x).flatten(2)
    k = torch.einsum("oc,bchw->bohw", block.key.weight[:, :, 0, 0], x).flatten(2)
    v = torch.einsum("oc,bchw->bohw", block.value.weight[:, :, 0, 0], x).flatten(2)
    out = torch.empty(2, 4, 15)
    for b in range(2):
        for p in range(15):  # position p attends to every position r: softmax_r(<q_p, k_r> / sqrt(4))
            a = torch.softmax(torch.stack([q[b, :, p] @ k[b, :, r] for r in range(15)]) / 2.0, dim=0)
            out[b, :, p] = (v[b] * a).sum(1)
    expected = block.fuse(torch.cat([x, block.expand(out.view(2, 4, 5, 3))], dim=1))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_channel_queue_writes_wraps_as_released_and_resumes_exactly():
    q = ChannelQueue(10, 4, per_step=4, seed=3)
    assert torch.allclose(q.entries.norm(dim=1), torch.ones(10))  # random unit vectors to start
    ChannelQueue(4, 4, per_step=4)  # a step may fill the whole queue, not more
    assert ChannelQueue(300, 4).per_step == 256  # the release's channel_update_freq
    assert torch.equal(ChannelQueue(10, 4, per_step=4).entries, ChannelQueue(10, 4, per_step=4, seed=0).entries)
    with pytest.raises(ValueError, match="per_step 5 exceeds the channel queue's 4 slots"):
        ChannelQueue(4, 4, per_step=5)
    first = q.entries.clone()
    keys = F.normalize(torch.randn(6, 4), dim=1)
    q.enqueue(keys)
    assert q.ptr == 4 and not torch.equal(q.entries[:4], first[:4]) and torch.equal(q.entries[4:], first[4:])
    assert all(any(torch.allclose(row, k) for k in keys) for row in q.entries[:4])  # 4 of the 6, drawn at random
    q.enqueue(keys)
    before = q.entries.clone()
    q.enqueue(keys)  # 8 + 4 reaches the end: the last 4 slots, the pointer back to 0 (slots 8, 9 were never 4..7's)
    assert q.ptr == 0 and torch.equal(q.entries[:6], before[:6]) and not torch.equal(q.entries[6:], before[6:])
    drawn = q.sample(10)  # every slot once, in a random order
    assert sorted(map(tuple, drawn.tolist())) == sorted(map(tuple, q.entries.tolist())) and not torch.equal(drawn, q.entries)
    state = q.state_dict()
    other = ChannelQueue(10, 4, per_step=4, seed=99)
    other.load_state_dict(state)
    q.enqueue(keys), other.enqueue(keys)
    assert torch.equal(q.entries, other.entries) and torch.equal(q.sample(5), other.sample(5))
    with pytest.raises(ValueError, match="width 3"):
        q.enqueue(torch.randn(2, 3))
    with pytest.raises(ValueError, match="does not match"):
        ChannelQueue(11, 4, per_step=4).load_state_dict(state)


def _build(overrides=(), crop=(48, 40)):
    cfg = load_recipe("demo/cirkdv2", [f"data.crop_size=[{crop[0]}, {crop[1]}]", "student.backbone=resnet10t",
                                       "teacher.backbone=resnet10t", "student.pretrained=false", *overrides])
    s, torch_seed = cfg.student, torch.manual_seed(0)
    student = build_segmentor(s.arch, s.backbone, cfg.num_classes, False, s.aux, s.head_width).train()
    teacher = build_segmentor(cfg.teacher.arch, cfg.teacher.backbone, cfg.num_classes, False, False, 96).eval()
    ctx = BuildContext(student=student.output_channels, teacher=teacher.output_channels, num_classes=cfg.num_classes,
                       crop_size=crop, per_device_batch=2, student_strides=student.output_strides,
                       teacher_strides=teacher.output_strides)
    return cfg, student, teacher, build_method(cfg.method, ctx)


def test_every_term_reads_the_context_block_output_and_the_queue_fits_a_partial_patch():
    cfg, student, teacher, method = _build()
    part = method.parts["cirkdv2"]
    # 48x40 crop, head at 1/8: 6x5, pooled by 2 with the last patch partial: 3x3 positions
    assert part.channel_queue.entries.shape == (2000, 9)
    x, y = torch.randn(2, 3, 48, 40), torch.randint(0, cfg.num_classes, (2, 48, 40))
    with torch.no_grad():
        t_out = teacher(x)
    s_out = student(x)
    terms = method(s_out, t_out, y)
    assert {"cirkd_batch", "cirkd_pixel", "cirkd_region", "cirkd_fitnet", "cirkd_channel_batch", "cirkd_channel_memory",
            "cirkd_channel_kd", "kd"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    # the channel KD term written out: the projected, pooled, unit student channels against the teacher's
    o = part.options
    s_ctx = part.context(s_out.head)
    s_vec = _pooled_unit(part.channel_projector(torch.nn.AvgPool2d(2, 2, ceil_mode=True)(s_ctx)), 1)
    t_vec = _pooled_unit(t_out.head, 2)
    assert torch.allclose(terms["cirkd_channel_kd"], o.channel_kd_weight * ((s_vec - t_vec) ** 2).mean(), rtol=1e-5)
    fit = part.fitnet_adapter(s_ctx)
    assert torch.allclose(terms["cirkd_fitnet"], o.fitnet_weight * ((fit - t_out.head) ** 2).mean(), rtol=1e-5)
    # the context block's parameters get gradients from the feature terms
    (terms["cirkd_channel_kd"]).backward()
    assert part.context.query.weight.grad is not None and part.context.query.weight.grad.abs().sum() > 0
    state = method.run_states()["cirkdv2"].state_dict()
    assert set(state) == {"classes", "channels"}


def test_without_context_the_terms_read_the_head_feature_itself():
    cfg, student, teacher, method = _build(["method.cirkdv2.context=false"])
    part = method.parts["cirkdv2"]
    assert part.context is None
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        t_out = teacher(x)
    s_out = student(x)
    terms = method(s_out, t_out, torch.zeros(2, 48, 40, dtype=torch.long))
    fit = part.fitnet_adapter(s_out.head)
    assert torch.allclose(terms["cirkd_fitnet"], ((fit - t_out.head) ** 2).mean(), rtol=1e-5)


def test_minibatch_pooling_starts_at_the_set_size():
    _, _, _, method = _build(["method.cirkdv2.minibatch_pool_from=6"])
    part = method.parts["cirkdv2"]
    s = torch.randn(2, 4, 6, 9)
    pooled, _ = part._minibatch_maps(s, s)
    assert pooled.shape[-2:] == (math.ceil(6 / 4), math.ceil(9 / 4))
    same, _ = part._minibatch_maps(s[..., :5, :], s[..., :5, :])
    assert same.shape[-2:] == (5, 9)
    narrow = torch.randn(2, 4, 9, 5)  # both sides must reach the size
    assert part._minibatch_maps(narrow, narrow)[0].shape[-2:] == (9, 5)


@pytest.mark.parametrize("override, key", [("method.cirkdv2.channel_per_step=5000", "channel_per_step"),
                                           ("method.cirkdv2.channel_pool=0", "channel_pool"),
                                           ("method.cirkdv2.minibatch_pool_from=-1", "minibatch_pool_from")])
def test_bad_channel_options_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"method\.cirkdv2\.{key}.* (must be|exceeds)"):
        load_recipe("demo/cirkdv2", [override])


def test_the_smallest_channel_options_are_accepted():
    cfg = load_recipe("demo/cirkdv2", ["method.cirkdv2.channel_pool=1", "method.cirkdv2.channel_queue=1",
                                       "method.cirkdv2.channel_contrasts=1", "method.cirkdv2.channel_per_step=1",
                                       "method.cirkdv2.minibatch_pool_from=0"])
    o = cfg.method.cirkdv2
    assert (o.channel_pool, o.channel_queue, o.channel_per_step, o.minibatch_pool_from) == (1, 1, 1, 0)


def test_the_channel_queue_is_as_wide_as_the_pooled_head_map_at_the_crop():
    """Without the networks' strides (a bare context) the head is taken at 1/8, the networks' stride."""
    from afdcd_bench.models import build_segmentor as build

    cfg = load_recipe("demo/cirkdv2", ["student.backbone=resnet10t", "teacher.backbone=resnet10t", "student.pretrained=false"])
    s = build("deeplabv3", "resnet10t", 11, head_width=16)
    t = build("deeplabv3", "resnet10t", 11, head_width=24)
    bare = BuildContext(student=s.output_channels, teacher=t.output_channels, num_classes=11, crop_size=(72, 40), per_device_batch=2)
    # 72x40 at 1/8: 9x5, pooled by 2 with partial patches: 5x3
    assert build_method(cfg.method, bare).parts["cirkdv2"].channel_queue.entries.shape == (2000, 15)
