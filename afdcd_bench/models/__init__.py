"""Segmentation networks on timm backbones; they know nothing of losses or training."""
from .backbones import CAFFE_NORMALIZATION, PretrainedWeightsError
from .checkpoint import load_segmentor, read_meta, save_segmentor
from .segmentor import Segmentor, SegmentorOutput, build_segmentor

__all__ = [
    "CAFFE_NORMALIZATION",
    "PretrainedWeightsError",
    "Segmentor",
    "SegmentorOutput",
    "build_segmentor",
    "load_segmentor",
    "read_meta",
    "save_segmentor",
]
