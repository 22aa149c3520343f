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
