import math

import pytest
import torch

from afdcd_bench.metrics import SegmentationMetric


def test_against_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    m = SegmentationMetric(4)
    m.update(pred, target)
    # rows = truth: class0 -> {0:1, 1:1}; class1 -> {1:2, 2:1}; class2 -> {2:1, 0:1}; pixel at 255 ignored
    want = torch.tensor([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(m.confusion, want)
    out = m.compute()
    iou0, iou1, iou2 = 1 / 3, 2 / 4, 1 / 3
    assert out["iou"][:3] == pytest.approx([iou0, iou1, iou2])
    assert math.isnan(out["iou"][3])  # never present: excluded from the mean
    assert out["miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert out["miou_all_slots"] == pytest.approx((iou0 + iou1 + iou2) / 4)
    assert out["pixel_acc"] == pytest.approx(4 / 7)


def test_sync_sums_and_bad_ids():
    m = SegmentationMetric(2)
    m.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    m.sync(lambda t: t * 2)
    assert m.compute()["pixels"] == 4
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.tensor([0]), torch.tensor([5]))


def oracle(pred, truth, num_classes, ignore=255):
    """IoU per class and pixel accuracy by counting pixels one at a time: a class counts where it is
    in the truth or the prediction (intersection over union of the two pixel sets), not otherwise."""
    pairs = [(p, t) for p, t in zip(pred.flatten().tolist(), truth.flatten().tolist()) if t != ignore]
    ious = {}
    for c in range(num_classes):
        inter = sum(1 for p, t in pairs if p == c and t == c)
        union = sum(1 for p, t in pairs if p == c or t == c)
        if union:
            ious[c] = inter / union
    return ious, sum(1 for p, t in pairs if p == t) / len(pairs)


def test_a_class_never_predicted_right_and_one_only_predicted_both_count_and_an_absent_one_does_not():
    truth = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 0], [0, 2]])  # class 1 in the truth, never right; class 2 only predicted; class 3 nowhere
    m = SegmentationMetric(4)
    m.update(pred, truth)
    out = m.compute()
    assert out["iou"][:3] == pytest.approx([2 / 3, 0.0, 0.0]) and math.isnan(out["iou"][3])
    assert out["miou"] == pytest.approx((2 / 3) / 3)  # not 2/3 (classes with a true positive only)
    assert out["miou_all_slots"] == pytest.approx((2 / 3) / 4)
    assert out["pixel_acc"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_metric_equals_pixel_counting_on_random_maps_with_ignored_pixels(seed):
    g = torch.Generator().manual_seed(seed)
    k = 6
    truth = torch.randint(0, k - 1, (3, 9, 7), generator=g)  # class k-1 never in the truth
    truth[torch.rand(truth.shape, generator=g) < 0.15] = 255
    pred = torch.randint(0, k, truth.shape, generator=g)
    pred[0, 0, 0] = k - 1
    m = SegmentationMetric(k)
    for i in range(truth.shape[0]):  # batches accumulate
        m.update(pred[i], truth[i])
    ious, acc = oracle(pred, truth, k)
    out = m.compute()
    assert {c: v for c, v in enumerate(out["iou"]) if not math.isnan(v)} == pytest.approx(ious)
    assert out["miou"] == pytest.approx(sum(ious.values()) / len(ious))
    assert out["pixel_acc"] == pytest.approx(acc)
    assert out["pixels"] == int((truth != 255).sum())


def test_coco_stuff_182_slots_with_11_that_never_occur():
    """The 182 label slots of COCO-Stuff-164K; 11 of them (unused COCO thing ids) occur nowhere:
    the mean over classes present is the 171-class mIoU, the all-slots mean divides by 182."""
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    used = torch.tensor(sorted(set(range(182)) - unused))
    assert len(used) == 171
    g = torch.Generator().manual_seed(0)
    truth = used[torch.randint(0, 171, (40, 40), generator=g)]
    pred = truth.clone()
    wrong = torch.rand(truth.shape, generator=g) < 0.3
    pred[wrong] = used[torch.randint(0, 171, (int(wrong.sum()),), generator=g)]
    m = SegmentationMetric(182)
    m.update(pred, truth)
    out = m.compute()
    ious, _ = oracle(pred, truth, 182)
    assert set(ious) <= set(used.tolist()) and not any(math.isfinite(out["iou"][c]) for c in unused)
    assert out["miou"] == pytest.approx(sum(ious.values()) / len(ious))
    assert out["miou_all_slots"] == pytest.approx(sum(ious.values()) / 182)
    # eval.all_slots (the published COCO-Stuff convention): evaluate reports the all-slots mean as mIoU, and keeps the other
    scores = _evaluate(pred, truth, 182, all_slots=True)
    assert scores["miou"] == pytest.approx(sum(ious.values()) / 182)
    assert scores["miou_present"] == pytest.approx(sum(ious.values()) / 171)
    assert _evaluate(pred, truth, 182, all_slots=False)["miou"] == pytest.approx(sum(ious.values()) / 171)


class _Fixed(torch.nn.Module):
    """A network whose logits are one-hot maps of the prediction stored for each image (index in channel 0)."""

    def __init__(self, preds, num_classes):
        super().__init__()
        self.preds, self.k = preds, num_classes

    def forward(self, x):
        from types import SimpleNamespace

        p = self.preds[x[:, 0, 0, 0].round().long()]
        return SimpleNamespace(logits=torch.nn.functional.one_hot(p, self.k).permute(0, 3, 1, 2).float())


def _evaluate(pred, truth, k, **eval_options):
    from accelerate import Accelerator, DataLoaderConfiguration

    from afdcd_bench.config.schema import EvalConfig
    from afdcd_bench.engine import evaluate

    pred, truth = pred.reshape(-1, *pred.shape[-2:]), truth.reshape(-1, *truth.shape[-2:])
    images = torch.zeros(len(pred), 3, *pred.shape[-2:], dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(pred))
    data = [{"image": images[i], "label": truth[i], "name": str(i)} for i in range(len(pred))]
    index_as_is = {"mean": [0.0] * 3, "std": [1.0] * 3, "scale": 255.0}  # the input value of pixel (0, 0) is the image's index
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(even_batches=False))
    loader = acc.prepare(torch.utils.data.DataLoader(data, batch_size=2))
    return evaluate(_Fixed(pred, k), loader, k, acc, EvalConfig(**eval_options), normalization=index_as_is)


def test_evaluate_over_a_loader_equals_pixel_counting_over_the_whole_split():
    g = torch.Generator().manual_seed(3)
    truth = torch.randint(0, 4, (5, 6, 6), generator=g)
    truth[0, :2] = 255
    pred = torch.randint(0, 5, truth.shape, generator=g)
    ious, acc = oracle(pred, truth, 5)
    out = _evaluate(pred, truth, 5)
    assert out["miou"] == pytest.approx(sum(ious.values()) / len(ious)) and out["pixel_acc"] == pytest.approx(acc)


def test_an_empty_metric_and_a_single_pixel():
    empty = SegmentationMetric(3).compute()
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_acc"]) and empty["pixels"] == 0
    m = SegmentationMetric(3)
    m.update(torch.tensor([2]), torch.tensor([2]))  # one pixel, right: its class's union is 1
    out = m.compute()
    assert out["iou"][2] == 1.0 and out["miou"] == 1.0 and out["pixel_acc"] == 1.0


def test_maps_of_any_integer_or_float_dtype_are_counted_as_class_ids_in_an_int64_matrix():
    m = SegmentationMetric(3)
    assert m.confusion.dtype == torch.int64
    m.update(torch.tensor([0.0, 2.0, 1.0]), torch.tensor([0, 2, 2], dtype=torch.uint8))
    m.update(torch.tensor([1]), torch.tensor([1.0]))
    assert m.confusion.dtype == torch.int64 and m.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # labels decoded from PNGs are uint8: id x classes must not wrap at 256 (COCO-Stuff's 182 slots)
    coco = SegmentationMetric(182)
    coco.update(torch.tensor([150], dtype=torch.uint8), torch.tensor([150], dtype=torch.uint8))
    assert coco.confusion[150, 150] == 1 and coco.confusion.sum() == 1


@pytest.mark.parametrize("pred, target, message", [
    (torch.zeros(2, 2), torch.zeros(4), r"^prediction \(2, 2\) and target \(4,\) differ in shape$"),
    (torch.tensor([0]), torch.tensor([3]), r"^target holds class ids outside 0\.\.2 \(and ignore 255\)$"),
    (torch.tensor([0]), torch.tensor([-1]), r"^target holds class ids outside 0\.\.2"),
    (torch.tensor([3]), torch.tensor([0]), r"^prediction holds class ids outside 0\.\.2$"),
    (torch.tensor([-1]), torch.tensor([0]), r"^prediction holds class ids outside 0\.\.2$"),
])
def test_out_of_range_ids_and_shapes_are_refused_naming_them(pred, target, message):
    with pytest.raises(ValueError, match=message):
        SegmentationMetric(3).update(pred, target)
