"""Each registered method's terms, recomputed here from the loss functions alone.

test_term_weights shows that a term moves with its own weight; it cannot see a term divided by
its weight, an option that never reaches its loss, or a term computed on the aux logits. Here
every method is built on synthetic outputs (shapes chosen so that no option is at a default
the code could silently fall back to), with a simulated second process (gather, mean and sum over
processes that are not identities), and each returned term must equal its weight times its loss
function called by hand with the options, the context and the inputs. The parameters a method
owns (align convs, projectors, tokens) are copied into the reference, never its behaviour.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from afdcd_bench.losses import (AfDCDLoss, cirkd_channel_batch_loss, cirkd_memory_kl, cirkd_minibatch_loss, cwd_loss,
                                discriminator_hinge,
                                dist_loss, fitnet_loss, generator_hinge, ifvd_loss, kd_loss, kt_feature_terms,
                                kt_logit_tailoring_loss, pairwise_loss)
from afdcd_bench.losses.ifvd import labels_at
from afdcd_bench.losses.maskd import maskd_loss, masked_logits, token_dice, token_masks
from afdcd_bench.losses.task import segmentation_ce
from afdcd_bench.methods import METHODS, BuildContext, RunStates
from afdcd_bench.methods._channel_queue import ChannelQueue
from afdcd_bench.methods._class_queues import ClassQueues
from afdcd_bench.models import SegmentorOutput

K, B = 5, 4  # classes; images per process
IGNORE = 250  # not the default 255: a method that drops the context's ignore label is seen
SEED = 7  # the run's seed in the context (not the default 0)
CH = {"logits": K, "aux_logits": K, "features": 24, "c3": None, "head": 12}
CH_T = {"logits": K, "aux_logits": K, "features": 40, "c3": None, "head": 20}


def _gather(x):  # a second process whose images are this one's in another order
    return torch.cat([x, x.roll(1, 0)])


def _reduce_mean(x):  # a second process with another count
    return (x + 3.0) / 2


def _sum_across(x):  # a second process whose sums are not this one's
    return 1.5 * x + 0.25


def _context(setting):
    student = dict(CH, aux_logits=None if setting == "noaux" else K)
    ctx = BuildContext(student=student, teacher=dict(CH_T), num_classes=K, ignore_index=IGNORE, crop_size=(512, 512),
                       per_device_batch=B, seed=SEED, student_strides={"head": 32}, teacher_strides={"head": 32})
    if setting != "one_process":
        ctx.num_processes, ctx.gather, ctx.reduce_mean, ctx.sum_across = 2, _gather, _reduce_mean, _sum_across
    return ctx


def _outputs(setting, beyond=False, seed=0):
    """setting "aux": both networks have aux logits; "noaux": the student has none; "one_process":
    one labelled pixel (every other ignored or of no class), on one process. beyond: some pixels
    labelled K, a class that does not exist (for the methods that skip them)."""
    student_aux = setting != "noaux"
    g = torch.Generator().manual_seed(seed)

    def r(c, h, w, grad=False):
        return torch.randn(B, c, h, w, generator=g).requires_grad_(grad)

    s = SegmentorOutput(logits=r(K, 64, 64, True), aux_logits=r(K, 64, 64, True) if student_aux else None,
                        features=r(24, 8, 8, True), head=r(12, 16, 16, True))
    t = SegmentorOutput(logits=r(K, 64, 64) * 2, aux_logits=r(K, 64, 64), features=r(40, 8, 8), head=r(20, 16, 16))
    labels = torch.randint(0, K, (B, 64, 64), generator=g)
    labels[:, :5] = IGNORE
    labels[0, 20:30, 20:30] = IGNORE
    if beyond:
        labels[1, 40:50, 40:50] = K
    if setting == "one_process":
        labels[:] = IGNORE
        labels[1, 8:12, 8:12] = 2  # one pixel of the 16x16 head map (nearest takes every 4th)
    return s, t, labels


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.safetensors"
    save_file({"tokens": torch.randn(3, K, generator=torch.Generator().manual_seed(1))}, str(path))
    return str(path)


# options away from every default (weights, temperatures, pools, masks, modes)
OPTIONS = {
    "kd": dict(weight=0.7, temperature=3.0),
    "afdcd": dict(lambda_kd=0.6, temperature=2.0, lambda_fd=0.3, lambda_ctr=0.2, mode="omni", groups=8, patch=[2, 2],
                  pool=0, tau=0.5, distance="l2", mask="random", mask_ratio=0.4, projector="enhanced"),
    "fd": dict(weight=0.3, mask="random", mask_ratio=0.4, projector="enhanced"),
    "cwd": dict(feature_weight=0.8, logit_weight=0.6, temperature=2.5),
    "dist": dict(weight=0.9, beta=0.7, gamma=1.3, aux_weight=0.3),
    "ifvd": dict(weight=1.7, count_ignored=True),
    "fitnet": dict(weight=3.0),
    # the switch after the first of the two steps (round(5e-5 x 40000) = 2): both directions are checked
    "kt": dict(kd_weight=0.6, aux_factor=0.3, lt_weight=0.7, ft_weight=0.8, triplet_weight=0.9, temperature=2.0,
               switch_fraction=5e-5, train_tailoring=True),
    "skd": dict(weight=0.4, pool=3),
    "adv": dict(weight=0.2, d_weight=0.3, lr=2e-3, betas=[0.5, 0.9], eps=1e-6),
    "maskd": dict(weight=0.8, aux_weight=0.3),
    "maskd_tokens": dict(num_tokens=3, init_std=0.5, dice_weight=0.6),
    "cirkd": dict(minibatch_weight=0.7, pixel_weight=0.3, region_weight=0.2, tau=0.3, temperature=2.0, pixel_queue=30,
                  region_queue=6, pixel_contrasts=11, region_contrasts=7, pixels_per_image=3, minibatch_images=4,
                  pixel_enqueue="class", enqueue="after_step"),
    # the 16x16 head maps: pooled by 4 for the pixel mini-batch term (from 16), by 3 for the channels (a partial patch)
    "cirkdv2": dict(minibatch_weight=0.7, pixel_weight=0.3, region_weight=0.2, tau=0.3, temperature=2.0, pixel_queue=30,
                    region_queue=6, pixel_contrasts=11, region_contrasts=7, pixels_per_image=3, minibatch_images=4,
                    pixel_enqueue="class", enqueue="after_step", fitnet_weight=0.4, context=True, channel_batch_weight=0.6,
                    channel_memory_weight=0.25, channel_kd_weight=5.0, channel_pool=3, channel_queue=50, channel_contrasts=13,
                    channel_per_step=9, minibatch_pool_from=16),
}
VARIANTS = {  # further option sets a method's reference must also match
    "cirkd": [dict(enqueue="before_loss", pixel_enqueue="released", minibatch_images=2), dict(region_weight=0.0),
              dict(pixel_weight=0.0, region_weight=0.0)],
    "cirkdv2": [dict(context=False, enqueue="before_loss", pixel_enqueue="released", minibatch_pool_from=0, minibatch_images=1),
                dict(pixel_weight=0.0, region_weight=0.0, channel_memory_weight=0.0, fitnet_weight=0.0, channel_pool=1),
                dict(channel_batch_weight=0.0, channel_kd_weight=0.0),  # the memory term alone still needs the projector
                dict(channel_batch_weight=0.0, channel_kd_weight=0.0, channel_memory_weight=0.0)],  # no channel part at all
    "dist": [dict(intra_batch="device")],
    "afdcd": [dict(mask="center", lambda_kd=0.0, mode="spatial")],
    "fd": [dict(mask="center", projector="basic")],
    "ifvd": [dict(count_ignored=False)],
    "kt": [dict(train_tailoring=False, switch_fraction=0.5)],
}


def _aux(s, t, weight, loss):
    """An aux term where both networks have aux logits and its weight is not zero."""
    return {} if not weight or s.aux_logits is None or t.aux_logits is None else {"aux": loss(s.aux_logits, t.aux_logits)}


def _feature_loss(m, o, **kw):
    ref = AfDCDLoss(CH["features"], CH_T["features"], mask=o.mask, mask_ratio=o.mask_ratio, projector=o.projector, **kw)
    ref.load_state_dict(m.feature_loss.state_dict())  # strict: the same parts, the same shapes
    return ref


def ref_kd(m, o, ctx, s, t, y, steps):
    return [{"kd": o.weight * kd_loss(s.logits, t.logits, o.temperature)}] * steps, None


def ref_afdcd(m, o, ctx, s, t, y, steps):
    ref = _feature_loss(m, o, mode=o.mode, groups=o.groups, patch=tuple(o.patch), pool=o.pool, tau=o.tau,
                        distance=o.distance)
    out = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the random mask of each step, as the method draws it
        fd, ctr = ref(s.features, t.features)
        out.append({**({"kd": o.lambda_kd * kd_loss(s.logits, t.logits, o.temperature)} if o.lambda_kd else {}),
                    "fd": o.lambda_fd * fd, "ctr": o.lambda_ctr * ctr})
    return out, None


def ref_fd(m, o, ctx, s, t, y, steps):
    ref = _feature_loss(m, o, mode="spatial")
    out = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        out.append({"fd": o.weight * ref.mimic(s.features, t.features)[0]})
    return out, None


def ref_cwd(m, o, ctx, s, t, y, steps):
    aligned = F.conv2d(s.head, m.align.weight)  # a 1x1 conv without bias
    return [{"cwd_feature": o.feature_weight * cwd_loss(aligned, t.head, o.temperature),
             "cwd_logit": o.logit_weight * cwd_loss(s.logits, t.logits, o.temperature)}] * steps, None


def ref_dist(m, o, ctx, s, t, y, steps):
    across = ctx.sum_across if o.intra_batch == "global" else None
    terms = {"dist": o.weight * dist_loss(s.logits, t.logits, o.beta, o.gamma, across)}
    for k, v in _aux(s, t, o.aux_weight, lambda a, b: dist_loss(a, b, o.beta, o.gamma, across)).items():
        terms["dist_aux"] = o.weight * o.aux_weight * v
    return [terms] * steps, None


def ref_fitnet(m, o, ctx, s, t, y, steps):
    aligned = F.conv2d(s.features, m.adapter.weight)  # a 1x1 conv without bias, to the teacher's channels
    return [{"fitnet": o.weight * fitnet_loss(aligned, t.features)}] * steps, None


def ref_kt(m, o, ctx, s, t, y, steps):
    out = []
    for step in range(steps):
        student_tailored = step + 1 < round(o.switch_fraction * ctx.iterations)  # 1-based iterations, as released
        ft, tri = kt_feature_terms(s.head, t.head, student_tailored, m.tailor_student, m.tailor_teacher, m.anchor, o.temperature)
        terms = {"kt_kd": o.kd_weight * cwd_loss(s.logits, t.logits, o.temperature),
                 "kt_lt": o.lt_weight * kt_logit_tailoring_loss(s.logits, t.logits, y, K, o.temperature, IGNORE),
                 "kt_ft": o.ft_weight * ft, "kt_triplet": o.triplet_weight * tri}
        for k, v in _aux(s, t, 1.0, lambda a, b: cwd_loss(a, b, o.temperature)).items():
            terms["kt_kd_aux"] = o.aux_factor * o.kd_weight ** 2 * v
        out.append(terms)
    return out, None


def _tailoring_size(c):  # Tailoring(c, c // 2): three 1x1 convs with biases
    h = c // 2
    return c * h + h + h * h + h + h * c + c


def ref_ifvd(m, o, ctx, s, t, y, steps):
    return [{"ifvd": o.weight * ifvd_loss(s.head, t.head, y, K, IGNORE, o.count_ignored)}] * steps, None


def ref_skd(m, o, ctx, s, t, y, steps):
    return [{"pairwise": o.weight * pairwise_loss(s.head, t.head, o.pool)}] * steps, None


def ref_adv(m, o, ctx, s, t, y, steps):
    d = copy.deepcopy(m.discriminator)
    opt = torch.optim.Adam(d.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    out = []
    for _ in range(steps):
        terms = {"adv": o.weight * generator_hinge(d(s.logits))}
        loss = o.d_weight * discriminator_hinge(d(t.logits), d(s.logits.detach()))
        opt.zero_grad()
        grads = torch.autograd.grad(loss, list(d.parameters()))
        for p, gr in zip(d.parameters(), grads):  # two processes: the gradient averaged over them
            p.grad = ctx.reduce_mean(gr)
        opt.step()
        out.append({**terms, "d": float(loss.detach())})
    return out, None


def ref_maskd(m, o, ctx, s, t, y, steps):
    tokens = m.tokens
    terms = {"maskd": o.weight * maskd_loss(s.logits, t.logits, token_masks(t.logits, tokens))}
    for k, v in _aux(s, t, o.aux_weight, lambda a, b: maskd_loss(a, b, token_masks(b, tokens))).items():
        terms["maskd_aux"] = o.weight * o.aux_weight * v
    return [terms] * steps, None


def ref_maskd_tokens(m, o, ctx, s, t, y, steps):
    tokens = torch.randn(o.num_tokens, K, generator=torch.Generator().manual_seed(SEED)) * o.init_std
    assert torch.equal(m.tokens, tokens)  # drawn from the run's seed, at the options' scale
    masks = token_masks(t.logits, m.tokens)
    return [{"tokens_ce": segmentation_ce(masked_logits(t.logits, masks), y, IGNORE),
             "tokens_dice": o.dice_weight * token_dice(masks)}] * steps, None


def ref_cirkd(m, o, ctx, s, t, y, steps):
    g = o.minibatch_images
    batch = torch.stack([cirkd_minibatch_loss(s.head[i:i + g], t.head[i:i + g], o.tau) for i in range(0, B, g)]).mean()
    if not (o.pixel_weight or o.region_weight):  # no memory: no queues, no projector
        assert m.run_state() is None and not list(m.parameters())
        return [{"cirkd_batch": o.minibatch_weight * batch}] * steps, None
    queues = ClassQueues(K, o.pixel_queue, o.region_queue, CH_T["head"], o.pixels_per_image, seed=SEED,
                         pixel_enqueue=o.pixel_enqueue)
    tn = F.normalize(t.head, dim=1)
    lab = labels_at(y, tuple(tn.shape[-2:]))
    valid = (lab >= 0) & (lab < K)
    projected = F.conv2d(F.relu(m.projector[1](F.conv2d(s.head, m.projector[0].weight))), m.projector[3].weight)
    sv = F.normalize(projected, dim=1).permute(0, 2, 3, 1)[valid]
    tv = tn.permute(0, 2, 3, 1)[valid]
    count = valid.sum().float()
    scale = 1.0 / (ctx.reduce_mean(count) if ctx.num_processes > 1 else count).clamp_min(1.0)
    out = []
    for _ in range(steps):
        if o.enqueue == "before_loss":
            queues.enqueue(ctx.gather(tn), ctx.gather(lab))
        pixel_bank, region_bank = queues.sample(o.pixel_contrasts, o.region_contrasts)
        terms = {"cirkd_batch": o.minibatch_weight * batch}
        for key, bank in (("pixel", pixel_bank), ("region", region_bank)):
            weight = getattr(o, f"{key}_weight")
            if weight:
                terms[f"cirkd_{key}"] = weight * cirkd_memory_kl(sv, tv, bank, o.tau, o.temperature).sum() * scale
        out.append(terms)
        if o.enqueue == "after_step":
            queues.enqueue(ctx.gather(tn), ctx.gather(lab))
    return out, queues


def _bn_relu(x, bn):  # a BatchNorm in training mode (the method's parts train), then ReLU
    return F.relu(F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))


def ref_cirkdv2(m, o, ctx, s, t, y, steps):
    f = s.head
    if o.context:  # attention over the 256 positions at half the width, concatenated with f and fused back
        c = m.context
        q, k, v = (F.conv2d(f, conv.weight).flatten(2) for conv in (c.query, c.key, c.value))
        attn = torch.softmax(q.transpose(1, 2) @ k * q.shape[1] ** -0.5, dim=-1)  # (B, 256 queries, 256 keys)
        ctx_map = (attn @ v.transpose(1, 2)).transpose(1, 2).reshape(B, -1, 16, 16)
        expanded = _bn_relu(F.conv2d(ctx_map, c.expand[0].weight), c.expand[1])
        f = _bn_relu(F.conv2d(torch.cat([s.head, expanded], 1), c.fuse[0].weight), c.fuse[1])
    else:
        assert m.context is None
    g = o.minibatch_images
    fs, ft = (F.avg_pool2d(f, 4, 4, ceil_mode=True), F.avg_pool2d(t.head, 4, 4, ceil_mode=True)) if o.minibatch_pool_from else (f, t.head)
    batch = torch.stack([cirkd_minibatch_loss(fs[i:i + g], ft[i:i + g], o.tau) for i in range(0, B, g)]).mean()
    fixed = {"cirkd_batch": o.minibatch_weight * batch}
    if o.fitnet_weight:
        fixed["cirkd_fitnet"] = o.fitnet_weight * fitnet_loss(F.conv2d(f, m.fitnet_adapter.weight), t.head)
    p = m.channel_projector  # channels: pooled by 3 (16 -> 6, the last patch of 1), projected, unit over positions
    if not (o.channel_batch_weight or o.channel_memory_weight or o.channel_kd_weight):
        assert p is None
    else:
        pooled = F.avg_pool2d(f, o.channel_pool, o.channel_pool, ceil_mode=True)
        proj = F.conv2d(_bn_relu(F.conv2d(pooled, p[0].weight), p[1]), p[3].weight)
        sc = F.normalize(proj.flatten(2), dim=2)
        tc = F.normalize(F.avg_pool2d(t.head, o.channel_pool, o.channel_pool, ceil_mode=True).flatten(2), dim=2)
    if o.channel_batch_weight:
        groups = [cirkd_channel_batch_loss(sc[i:i + g], tc[i:i + g], o.tau) for i in range(0, B, g)]
        fixed["cirkd_channel_batch"] = o.channel_batch_weight * torch.stack(groups).mean()
    if o.channel_kd_weight:
        fixed["cirkd_channel_kd"] = o.channel_kd_weight * ((sc - tc) ** 2).mean()
    queues = channels = None
    if o.pixel_weight or o.region_weight:
        queues = ClassQueues(K, o.pixel_queue, o.region_queue, CH_T["head"], o.pixels_per_image, seed=SEED,
                             pixel_enqueue=o.pixel_enqueue)
    if o.channel_memory_weight:
        side = -(-16 // o.channel_pool)
        channels = ChannelQueue(o.channel_queue, side * side, o.channel_per_step, seed=SEED + 1)
    tn = F.normalize(t.head, dim=1)
    lab = labels_at(y, (16, 16))
    valid = (lab >= 0) & (lab < K)
    tv = tn.permute(0, 2, 3, 1)[valid]
    count = valid.sum().float()
    scale = 1.0 / (ctx.reduce_mean(count) if ctx.num_processes > 1 else count).clamp_min(1.0)
    rows_s, rows_t = (sc.flatten(0, 1), tc.flatten(0, 1)) if p is not None else (None, None)
    out = []
    for _ in range(steps):
        terms = dict(fixed)
        if queues is not None:
            if o.enqueue == "before_loss":
                queues.enqueue(ctx.gather(tn), ctx.gather(lab))
            banks = dict(zip(("pixel", "region"), queues.sample(o.pixel_contrasts, o.region_contrasts)))
            projected = F.conv2d(_bn_relu(F.conv2d(f, m.projector[0].weight), m.projector[1]), m.projector[3].weight)
            sv = F.normalize(projected, dim=1).permute(0, 2, 3, 1)[valid]
            for key in ("pixel", "region"):
                if getattr(o, f"{key}_weight"):
                    terms[f"cirkd_{key}"] = getattr(o, f"{key}_weight") * cirkd_memory_kl(sv, tv, banks[key], o.tau,
                                                                                          o.temperature).sum() * scale
        if channels is not None:
            if o.enqueue == "before_loss":
                channels.enqueue(ctx.gather(rows_t))
            bank = channels.sample(o.channel_contrasts)
            terms["cirkd_channel_memory"] = o.channel_memory_weight * cirkd_memory_kl(rows_s, rows_t, bank, o.tau, o.temperature).mean()
        out.append(terms)
        if o.enqueue == "after_step":
            if queues is not None:
                queues.enqueue(ctx.gather(tn), ctx.gather(lab))
            if channels is not None:
                channels.enqueue(ctx.gather(rows_t))
    states = {k: v for k, v in (("classes", queues), ("channels", channels)) if v is not None}
    return out, (RunStates(states) if states else None)


REFERENCES = {name[4:]: f for name, f in globals().items() if name.startswith("ref_")}

# what the record must say each trained term was weighted by (aux: both networks have aux logits)
WEIGHTS = {
    "kd": lambda o, aux: {"kd": o.weight},
    "afdcd": lambda o, aux: {**({"kd": o.lambda_kd} if o.lambda_kd else {}), "fd": o.lambda_fd, "ctr": o.lambda_ctr},
    "fd": lambda o, aux: {"fd": o.weight},
    "cwd": lambda o, aux: {"cwd_feature": o.feature_weight, "cwd_logit": o.logit_weight},
    "dist": lambda o, aux: {"dist": o.weight, **({"dist_aux": o.weight * o.aux_weight} if aux else {})},
    "ifvd": lambda o, aux: {"ifvd": o.weight},
    "fitnet": lambda o, aux: {"fitnet": o.weight},
    "kt": lambda o, aux: {"kt_kd": o.kd_weight, **({"kt_kd_aux": o.aux_factor * o.kd_weight ** 2} if aux else {}),
                          "kt_lt": o.lt_weight, "kt_ft": o.ft_weight, "kt_triplet": o.triplet_weight},
    "skd": lambda o, aux: {"pairwise": o.weight},
    "adv": lambda o, aux: {"adv": o.weight, "d": o.d_weight},
    "maskd": lambda o, aux: {"maskd": o.weight, **({"maskd_aux": o.weight * o.aux_weight} if aux else {})},
    "maskd_tokens": lambda o, aux: {"tokens_ce": 1.0, "tokens_dice": o.dice_weight},
    "cirkd": lambda o, aux: {"cirkd_batch": o.minibatch_weight, "cirkd_pixel": o.pixel_weight,
                             "cirkd_region": o.region_weight},
    "cirkdv2": lambda o, aux: {"cirkd_batch": o.minibatch_weight, "cirkd_pixel": o.pixel_weight,
                               "cirkd_region": o.region_weight, "cirkd_fitnet": o.fitnet_weight,
                               "cirkd_channel_batch": o.channel_batch_weight, "cirkd_channel_memory": o.channel_memory_weight,
                               "cirkd_channel_kd": o.channel_kd_weight},
}


def _state_bytes(o, queues):
    """Memory held beyond trained weights: CIRKD's float32 queues, MasKD's frozen tokens."""
    return 0 if queues is None else 4 * (queues.pixel.numel() + queues.region.numel())


STATE_BYTES = {name: (lambda o, state: 0) for name in WEIGHTS}
STATE_BYTES["cirkd"] = _state_bytes
STATE_BYTES["cirkdv2"] = lambda o, state: 0 if state is None else sum(
    4 * (q.pixel.numel() + q.region.numel()) if k == "classes" else 4 * q.entries.numel() for k, q in state.states.items())
STATE_BYTES["maskd"] = lambda o, state: 4 * 3 * K  # the 3 x K tokens of the file


# parameters trained with the student (None: checked through the reference's own modules)
PARAMETERS = {name: (lambda o: 0) for name in ("kd", "dist", "ifvd", "skd", "adv", "maskd")}  # adv's is an own part
PARAMETERS.update({
    "cwd": lambda o: CH["head"] * CH_T["head"],  # a 1x1 conv without bias (a bias is invisible to CWD's spatial softmax)
    "fitnet": lambda o: CH["features"] * CH_T["features"],
    # the release never trains its tailoring modules and anchor conv; the variant trains them
    "kt": lambda o: (_tailoring_size(CH_T["head"]) + _tailoring_size(CH["head"]) + CH["head"] * CH_T["head"]) if o.train_tailoring else 0,
    "maskd_tokens": lambda o: o.num_tokens * K,
    "cirkd": lambda o: (CH["head"] * CH_T["head"] + 2 * CH_T["head"] + CH_T["head"] ** 2) if o.pixel_weight or o.region_weight else 0,
    # projectors (memory and channel: conv, BN, conv), the context block (q, k, v, expand + BN, fuse + BN), FitNet's conv
    "cirkdv2": lambda o: ((CH["head"] * CH_T["head"] + 2 * CH_T["head"] + CH_T["head"] ** 2)
                          * (bool(o.channel_batch_weight or o.channel_memory_weight or o.channel_kd_weight) + bool(o.pixel_weight or o.region_weight))
                          + (4 * CH["head"] * (CH["head"] // 2) + 2 * CH["head"] + 2 * CH["head"] ** 2 + 2 * CH["head"]) * o.context
                          + CH["head"] * CH_T["head"] * bool(o.fitnet_weight)),
})


def _cases():
    for name in sorted(METHODS):
        if name == "baseline":
            continue
        o = METHODS[name].Options(**OPTIONS[name])
        reads_aux = WEIGHTS[name](o, True) != WEIGHTS[name](o, False)  # the others never see aux logits
        settings = ["aux", *(["noaux"] if reads_aux else []), *(["one_process"] if name in ("cirkd", "cirkdv2") else [])]
        for i, extra in enumerate([{}, *VARIANTS.get(name, [])]):
            for setting in settings:
                yield pytest.param(name, extra, setting, id=f"{name}-{i}-{setting}")


def test_every_method_has_a_reference_here():
    assert set(REFERENCES) == set(WEIGHTS) == set(METHODS) - {"baseline"}
    for name, options in OPTIONS.items():
        defaults = METHODS[name].Options()
        same = [k for k, v in options.items() if getattr(defaults, k) == v and k not in ("mode", "mask", "pixel_enqueue",
                                                                                          "enqueue", "count_ignored", "context")]
        assert not same, f"{name}: {same} at their defaults, so a dropped option is not seen"


def _build(name, extra, setting, tokens_file):
    cls = METHODS[name]
    options = cls.Options(**{**OPTIONS[name], **extra, **({"stage_weights": tokens_file} if name == "maskd" else {})})
    ctx = _context(setting)
    torch.manual_seed(0)
    m = cls(options, ctx)
    for part in m.own_parts().values():  # as the loop does
        part.optimizer = part.make_optimizer(list(part.module.parameters()))
    assert m.ctx is ctx and m.options is options
    return m, options, ctx


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and sorted(a) == sorted(b) and all(_same_state(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name,extra,setting", list(_cases()))
def test_each_term_is_its_weight_times_its_loss_computed_by_hand(name, extra, setting, tokens_file):
    m, o, ctx = _build(name, extra, setting, tokens_file)
    s, t, y = _outputs(setting, beyond=name in ("cirkd", "cirkdv2", "ifvd"))
    steps = 2
    want, state = REFERENCES[name](m, o, ctx, s, t, y, steps)  # first: it copies what the method owns now
    got = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        terms = m(s, t, y)
        for k, v in terms.items():
            assert v.requires_grad, f"{name}: the {k} term trains nothing"
        got.append({k: v.detach().double() for k, v in terms.items()} | m.after_step())
    assert m.state_bytes() == STATE_BYTES[name](o, state), name
    want_params = PARAMETERS.get(name, lambda o: None)(o)
    if want_params is not None:  # the record's method_parameters: what trains with the student
        assert sum(p.numel() for p in m.parameters() if p.requires_grad) == want_params, name
    clipped = list(m.feature_loss.parameters()) if name in ("afdcd", "fd") else []  # Af-DCD's, as released
    assert [id(p) for p in m.clip_parameters()] == [id(p) for p in clipped] and (clipped or name not in ("afdcd", "fd"))
    if state is not None:  # the run state the method holds after the same steps
        held, ref = m.run_state().state_dict(), state.state_dict()
        assert _same_state(held, ref), name
    elif name in ("cirkd", "cirkdv2"):
        assert m.run_state() is None, name
    for step, (g, w) in enumerate(zip(got, want)):
        assert sorted(g) == sorted(w), (name, step)
        for k in w:
            assert float(g[k]) == pytest.approx(float(torch.as_tensor(w[k]).detach()), rel=1e-6, abs=1e-12), f"{name} step {step}: {k}"
    # the record's weights are those the terms were trained with, and name exactly those terms
    # (a zero weight may be listed, never used)
    weights = {k: v for k, v in m.weights().items() if v}
    assert weights == {k: v for k, v in WEIGHTS[name](o, setting != "noaux").items() if v}, name
    assert set(weights) == set(got[0]), (name, weights, sorted(got[0]))


@pytest.mark.parametrize("name", ["cwd", "cirkd"])
def test_equal_widths_need_no_align_conv(name, tokens_file):
    """CWD aligns only a student head of another width; CIRKD always projects (as released)."""
    cls = METHODS[name]
    ctx = BuildContext(student=dict(CH, head=20), teacher=dict(CH_T), num_classes=K, per_device_batch=2)
    m = cls(cls.Options(**({"pixel_queue": 50, "region_queue": 10} if name == "cirkd" else {})), ctx)
    if name == "cwd":
        assert isinstance(m.align, torch.nn.Identity) and not list(m.parameters())
    else:
        assert m.projector[0].weight.shape == (20, 20, 1, 1) and m.projector[0].bias is None


@pytest.mark.parametrize("setting", ["aux", "noaux"])
def test_the_task_term_is_the_ce_plus_the_aux_weight_times_the_aux_ce_and_the_record_says_so(setting):
    from afdcd_bench.config.schema import MethodConfig
    from afdcd_bench.methods import Method

    cfg = MethodConfig(name="kd", aux_weight=0.3, options={"kd": METHODS["kd"].Options(**OPTIONS["kd"])})
    m = Method(cfg, _context(setting))
    s, t, y = _outputs(setting)
    terms = m(s, t, y)
    want = segmentation_ce(s.logits, y, IGNORE)
    if setting == "aux":
        want = want + 0.3 * segmentation_ce(s.aux_logits, y, IGNORE)
    assert float(terms["task"]) == pytest.approx(float(want), rel=1e-6)
    assert float(terms["kd"]) == pytest.approx(float(0.7 * kd_loss(s.logits, t.logits, 3.0)), rel=1e-6)
    assert m.weights() == {"task": 1.0, **({"task_aux": 0.3} if setting == "aux" else {}), "kd": 0.7}


def test_adv_averages_the_discriminator_loss_over_accumulated_micro_batches_and_never_trains_it_through_the_student():
    m, o, ctx = _build("adv", {}, "aux", None)
    d = copy.deepcopy(m.discriminator)
    batches = [_outputs("aux", seed=i) for i in (1, 2)]
    for s, t, y in batches:
        term = m(s, t, y)["adv"]
        term.backward()
        assert all(p.grad is None for p in m.discriminator.parameters())  # the student's term trains the student only
        assert s.logits.grad is not None
    got = m.after_step()["d"]
    with torch.no_grad():
        for s, _, _ in batches:  # the student's forwards: spectral norm's power iteration steps on each call
            d(s.logits)
    losses = [o.d_weight * discriminator_hinge(d(t.logits), d(s.logits.detach())) for s, t, _ in batches]
    want = sum(losses) / 2
    assert got == pytest.approx(float(want), rel=1e-6)
    opt = torch.optim.Adam(d.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    grads = torch.autograd.grad(want, list(d.parameters()))
    for p, g in zip(d.parameters(), grads):
        p.grad = ctx.reduce_mean(g)
    opt.step()
    for (k, p), q in zip(m.discriminator.named_parameters(), d.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), k
    assert m.after_step() == {}  # nothing pending: no step
    # a second update (Adam's first step does not depend on its betas; the second does)
    s, t, y = batches[0]
    m(s, t, y)
    m.after_step()
    with torch.no_grad():
        d(s.logits)
    loss = o.d_weight * discriminator_hinge(d(t.logits), d(s.logits.detach()))
    for p, g in zip(d.parameters(), torch.autograd.grad(loss, list(d.parameters()))):
        p.grad = ctx.reduce_mean(g)
    opt.step()
    for (k, p), q in zip(m.discriminator.named_parameters(), d.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), k


def test_stage_of_names_the_method_a_stage_trains_for():
    from afdcd_bench.methods import stage_of

    assert stage_of("maskd_tokens") == "maskd"
    assert stage_of("kd") is None and stage_of("maskd") is None
    assert stage_of("maskd_tokens+kd") is None  # a stage with a student's term is no stage (refused at recipe load)
    assert stage_of("nosuch") is None
    assert stage_of("maskd_tokens+nosuch") == "maskd"  # unknown names are refused elsewhere, not here


def test_afdcd_passes_its_backend_to_the_contrastive_term():
    for backend in ("eager", "compiled"):
        m, _, _ = _build("afdcd", {"backend": backend}, "aux", None)
        assert m.feature_loss.backend == backend


def test_ifvd_uses_the_context_ignore_label_even_inside_the_class_range():
    cls = METHODS["ifvd"]
    ctx = BuildContext(student=dict(CH), teacher=dict(CH_T), num_classes=K, ignore_index=1)
    m = cls(cls.Options(weight=2.0), ctx)
    s, t, y = _outputs("aux")
    y[y == IGNORE] = 0
    got = float(m(s, t, y)["ifvd"])
    assert got == pytest.approx(2.0 * float(ifvd_loss(s.head, t.head, y, K, 1)), rel=1e-6)
    assert got != pytest.approx(2.0 * float(ifvd_loss(s.head, t.head, y, K, 255)), rel=1e-3)


@pytest.mark.parametrize("name", ["afdcd", "fd", "cwd", "fitnet"])
def test_only_afdcds_align_and_projector_are_clipped(name, tokens_file):
    """method.clip_grad_norm clips Af-DCD's align conv and projector (as released), no other method's parts."""
    m, _, _ = _build(name, {}, "aux", tokens_file)
    clipped = [id(p) for p in m.clip_parameters()]
    if name in ("afdcd", "fd"):
        assert clipped == [id(p) for p in m.feature_loss.parameters()] and len(clipped) > 2
    else:
        assert clipped == [] and list(m.parameters())
