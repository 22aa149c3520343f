"""Pure, reusable losses: nothing here knows about models, data or the training loop."""
from .afdcd import AfDCDLoss, AfDCDTerms, center_mask, random_mask
from .cirkd import channel_vectors, cirkd_channel_batch_loss, cirkd_memory_kl, cirkd_minibatch_loss
from .contrastive import contrastive_loss
from .cwd import cwd_loss
from .dist import dist_loss
from .fitnet import fitnet_loss
from .ifvd import ifvd_loss
from .kd import kd_loss
from .kt import kt_feature_terms, kt_logit_tailoring_loss
from .skd import Discriminator, discriminator_hinge, generator_hinge, pairwise_loss
from .task import IGNORE_INDEX, resize_to, segmentation_ce, task_loss, upsample_to

__all__ = [
    "AfDCDLoss",
    "AfDCDTerms",
    "Discriminator",
    "IGNORE_INDEX",
    "center_mask",
    "channel_vectors",
    "cirkd_channel_batch_loss",
    "cirkd_memory_kl",
    "cirkd_minibatch_loss",
    "contrastive_loss",
    "cwd_loss",
    "discriminator_hinge",
    "dist_loss",
    "fitnet_loss",
    "generator_hinge",
    "ifvd_loss",
    "kd_loss",
    "kt_feature_terms",
    "kt_logit_tailoring_loss",
    "pairwise_loss",
    "random_mask",
    "resize_to",
    "segmentation_ce",
    "task_loss",
    "upsample_to",
]
