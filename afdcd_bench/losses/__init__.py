"""Pure, reusable losses: nothing here knows about models, data or the training loop."""
from .afdcd import AfDCDLoss, AfDCDTerms, center_mask, random_mask
from .contrastive import contrastive_loss
from .kd import kd_loss
from .task import IGNORE_INDEX, segmentation_ce, task_loss, upsample_to

__all__ = [
    "AfDCDLoss",
    "AfDCDTerms",
    "IGNORE_INDEX",
    "center_mask",
    "contrastive_loss",
    "kd_loss",
    "random_mask",
    "segmentation_ce",
    "task_loss",
    "upsample_to",
]
