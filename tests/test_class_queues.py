"""CIRKD's class-wise queues on hand-made batches: which slots change, how pointers wrap, what the
released pixel indexing stores, and that the state round-trips exactly."""
import pytest
import torch

from afdcd_bench.methods._class_queues import ClassQueues

IGNORE = 255


def _batch():
    """2 images of 1x4 pixels, each pixel a distinct unit vector; labels 0 0 1 ign / 0 2 2 2."""
    feat = torch.nn.functional.normalize(torch.arange(1.0, 17.0).reshape(2, 2, 1, 4) ** 1.5 % 7 + 0.5, dim=1)
    labels = torch.tensor([[[0, 0, 1, IGNORE]], [[0, 2, 2, 2]]])
    return feat, labels


def _vec(feat, i, x):
    return feat[i, :, 0, x]


def _queues(**kw):
    return ClassQueues(3, pixel_size=5, region_size=2, dim=2, per_image=2, seed=0, **kw)


def test_enqueue_writes_the_class_slots_in_order_and_leaves_the_rest():
    feat, labels = _batch()
    q = _queues()
    pixel0, region0 = q.pixel.clone(), q.region.clone()
    q.enqueue(feat, labels)
    # regions: one per image and class present, at the class's pointer (2 slots: class 0 wraps)
    assert torch.allclose(q.region[0, 0], torch.nn.functional.normalize(_vec(feat, 0, 0) + _vec(feat, 0, 1), dim=0))
    assert torch.allclose(q.region[0, 1], _vec(feat, 1, 0))
    assert torch.allclose(q.region[1, 0], _vec(feat, 0, 2))
    mean2 = torch.nn.functional.normalize(_vec(feat, 1, 1) + _vec(feat, 1, 2) + _vec(feat, 1, 3), dim=0)
    assert torch.allclose(q.region[2, 0], mean2, atol=1e-6)
    assert torch.equal(q.region[1, 1], region0[1, 1]) and torch.equal(q.region[2, 1], region0[2, 1])
    assert q.region_ptr == [0, 1, 1]
    # pixels: min(n_c, 2) per image and class, consecutive slots; entries are pixels of that class
    assert q.pixel_ptr == [3, 1, 2]
    of_class = {0: [(0, 0), (0, 1), (1, 0)], 1: [(0, 2)], 2: [(1, 1), (1, 2), (1, 3)]}
    for c, slots in ((0, [0, 1, 2]), (1, [0]), (2, [0, 1])):
        for slot in slots:
            assert any(torch.equal(q.pixel[c, slot], _vec(feat, i, x)) for i, x in of_class[c]), (c, slot)
        for slot in range(max(slots) + 1, 5):
            assert torch.equal(q.pixel[c, slot], pixel0[c, slot])
    assert not torch.equal(q.pixel[0, 0], q.pixel[0, 1])  # two different pixels of image 0
    # the ignored pixel (image 0, x=3) is in no queue
    ignored = _vec(feat, 0, 3)
    assert not any(torch.equal(q.pixel[c, s], ignored) for c in range(3) for s in range(5))


def test_pixel_pointer_wraps_to_the_last_slots_then_restarts():
    feat, labels = _batch()
    q = _queues()
    q.pixel_ptr = [4, 0, 0]
    before = q.pixel.clone()
    q.enqueue(feat[:1], labels[:1])  # class 0: 2 pixels at pointer 4 of 5 -> slots 3 and 4, pointer back to 0
    assert q.pixel_ptr[0] == 0
    assert torch.equal(q.pixel[0, :3], before[0, :3])
    assert {tuple(q.pixel[0, 3].tolist()), tuple(q.pixel[0, 4].tolist())} == {
        tuple(_vec(feat, 0, 0).tolist()), tuple(_vec(feat, 0, 1).tolist())}


def test_released_pixel_indexing_stores_pixels_of_other_classes():
    feat, labels = _batch()
    q = _queues(pixel_enqueue="released")
    q.enqueue(feat, labels)
    # class 1 has 1 pixel in image 0: the release picks a random index in [0, 1) of the whole image,
    # pixel 0, which is of class 0; the default picks the class-1 pixel
    assert torch.equal(q.pixel[1, 0], _vec(feat, 0, 0))
    fixed = _queues()
    fixed.enqueue(feat, labels)
    assert torch.equal(fixed.pixel[1, 0], _vec(feat, 0, 2))


def test_state_round_trips_and_the_same_seed_gives_the_same_draws():
    feat, labels = _batch()
    a, b = _queues(), _queues()
    a.enqueue(feat, labels)
    b.enqueue(feat, labels)
    assert torch.equal(a.pixel, b.pixel) and torch.equal(a.region, b.region)
    saved = a.state_dict()
    first = a.sample(6, 3)
    c = _queues()
    c.load_state_dict(saved)
    again = c.sample(6, 3)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert first[0].shape == (3 * (6 // 3 + 1), 2) and first[1].shape == (3 * (3 // 3 + 1), 2)
    with pytest.raises(ValueError, match="do not match"):
        ClassQueues(3, 6, 2, 2, 2).load_state_dict(saved)


def test_a_queue_too_big_for_the_device_is_refused_before_it_is_allocated():
    from afdcd_bench.config import load_recipe
    from afdcd_bench.methods import BuildContext, build_method

    cfg = load_recipe("demo/cirkd", ["method.cirkd.pixel_queue=2000000000"])
    ctx = BuildContext({"logits": 11, "head": 64}, {"logits": 11, "head": 128}, 11, per_device_batch=2)
    with pytest.raises(ValueError, match=r"CIRKD queues need .* GiB .* lower method\.cirkd\.pixel_queue"):
        build_method(cfg.method, ctx)


def test_the_queues_are_no_module_state_so_no_wrapper_broadcasts_them():
    from afdcd_bench.config import load_recipe
    from afdcd_bench.methods import BuildContext, build_method

    cfg = load_recipe("demo/cirkd", ["method.cirkd.pixel_queue=40", "method.cirkd.region_queue=4",
                                    "method.cirkd.pixel_contrasts=64", "method.cirkd.region_contrasts=16"])
    method = build_method(cfg.method, BuildContext({"logits": 11, "head": 64}, {"logits": 11, "head": 128}, 11,
                                                   per_device_batch=2))
    sizes = [t.numel() for t in method.state_dict().values()]
    assert 11 * 40 * 128 not in sizes and 11 * 4 * 128 not in sizes  # DDP broadcasts buffers, and these are none
    assert method.run_states()["cirkd"].pixel.shape == (11, 40, 128)
    assert method.state_bytes() == {"cirkd": 11 * 44 * 128 * 4, "kd": 0}
    with pytest.raises(ValueError, match="minibatch_images=2 must divide the per-device batch 3"):
        build_method(cfg.method, BuildContext({"logits": 11, "head": 64}, {"logits": 11, "head": 128}, 11, per_device_batch=3))


def test_queues_start_as_unit_vectors_and_the_defaults_are_16_per_image_and_seed_0():
    from afdcd_bench.methods._class_queues import queue_bytes

    q = ClassQueues(3, pixel_size=20, region_size=4, dim=6)
    assert torch.allclose(q.pixel.norm(dim=2), torch.ones(3, 20)) and torch.allclose(q.region.norm(dim=2), torch.ones(3, 4))
    same = ClassQueues(3, pixel_size=20, region_size=4, dim=6, per_image=16, seed=0)
    assert torch.equal(q.pixel, same.pixel) and torch.equal(q.region, same.region) and q.per_image == 16
    assert q.nbytes == queue_bytes(3, 20, 4, 6) == 3 * 24 * 6 * 4
    assert not torch.equal(q.pixel, ClassQueues(3, pixel_size=20, region_size=4, dim=6, seed=1).pixel)
    # the contrast sample: floor(n / K) + 1 slots of every class
    pixels, regions = q.sample(7, 3)
    assert pixels.shape == (3 * 3, 6) and regions.shape == (3 * 2, 6)


def test_bad_queue_settings_are_refused_with_the_values():
    with pytest.raises(ValueError) as err:
        ClassQueues(3, pixel_size=5, region_size=2, dim=2, pixel_enqueue="bogus")
    assert str(err.value) == "pixel_enqueue must be one of ('class', 'released'), got 'bogus'"
    with pytest.raises(ValueError) as err:
        ClassQueues(3, pixel_size=5, region_size=2, dim=2, per_image=6)
    assert str(err.value) == "per_image 6 exceeds the pixel queue's 5 slots"
    assert ClassQueues(3, pixel_size=5, region_size=2, dim=2, per_image=5).per_image == 5  # as many as the slots: fits


def test_free_memory_is_memavailable_or_else_the_available_pages(monkeypatch):
    import io
    import os

    from afdcd_bench.methods import _class_queues

    meminfo = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12345678 kB\n"

    def fake_open(path, *a, **k):
        assert path == "/proc/meminfo"
        return io.StringIO(meminfo)

    monkeypatch.setattr(_class_queues, "open", fake_open, raising=False)
    assert _class_queues.free_memory_bytes(torch.device("cpu")) == 12345678 * 1024

    def no_proc(path, *a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr(_class_queues, "open", no_proc, raising=False)
    got = _class_queues.free_memory_bytes(torch.device("cpu"))
    want = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert got == pytest.approx(want, rel=0.1)  # free pages move between the two reads
