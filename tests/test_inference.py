"""Inference modes against cases where the answer is known: a window the size of the image is
whole-image inference, a pointwise network gives the same map through any windows, flip averaging
of a mirror-symmetric network changes nothing, and one scale is single-scale inference."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from afdcd_bench.config.schema import EvalConfig
from afdcd_bench.engine.inference import predict, slide_logits


class Net(nn.Module):
    def __init__(self, kernel: int, symmetric: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, kernel, padding=kernel // 2)
        if symmetric:  # every kernel its own mirror image: the network commutes with a horizontal flip
            with torch.no_grad():
                self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return SimpleNamespace(logits=self.conv(x))


def test_a_window_the_size_of_the_image_is_whole_image_inference():
    net, x = Net(3), torch.randn(2, 3, 20, 28)
    whole = predict(net, x, EvalConfig(mode="whole"))
    slide = predict(net, x, EvalConfig(mode="slide", crop_size=[20, 28], stride=[7, 9]))
    assert torch.equal(slide, whole)


@pytest.mark.parametrize("window, stride", [((8, 8), (3, 5)), ((12, 7), (12, 7)), ((32, 40), (5, 5))])
def test_a_pointwise_network_gives_the_same_map_through_any_windows(window, stride):
    """Overlaps averaged by their count, the last window flush with the border, images smaller than a window padded."""
    net, x = Net(1), torch.randn(1, 3, 20, 28)
    assert torch.allclose(slide_logits(net, x, window, stride), net(x).logits, atol=1e-6)


def test_a_sliding_window_that_dropped_the_border_or_the_count_would_differ():
    net, x = Net(3), torch.randn(1, 3, 20, 28)
    slid = slide_logits(net, x, (8, 8), (3, 5))
    assert slid.shape == (1, 5, 20, 28) and torch.isfinite(slid).all()
    assert not torch.allclose(slid, net(x).logits, atol=1e-3)  # a 3x3 network does see the window's edges


def test_flip_averaging_of_a_mirror_symmetric_network_changes_nothing():
    net, x = Net(3, symmetric=True), torch.randn(2, 3, 16, 16)
    plain = predict(net, x, EvalConfig()).softmax(1)
    flipped = predict(net, x, EvalConfig(flip=True))
    assert torch.allclose(flipped / 2, plain, atol=1e-6)
    lopsided = Net(3)
    assert not torch.allclose(predict(lopsided, x, EvalConfig(flip=True)) / 2, predict(lopsided, x, EvalConfig()).softmax(1), atol=1e-3)


def test_one_scale_is_single_scale_inference_and_each_scale_is_resized_back():
    net, x = Net(3), torch.randn(1, 3, 16, 24)
    single = predict(net, x, EvalConfig())
    assert torch.equal(predict(net, x, EvalConfig(scales=[1.0])), single)
    twice = predict(net, x, EvalConfig(scales=[1.0, 1.0]))
    assert torch.allclose(twice / 2, single.softmax(1), atol=1e-6)
    multi = predict(net, x, EvalConfig(scales=[0.5, 1.0, 1.5]))
    assert multi.shape == single.shape and torch.allclose(multi.sum(1), torch.full((1, 16, 24), 3.0), atol=1e-5)
