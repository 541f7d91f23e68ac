"""Re-ID losses: label-smoothed cross-entropy, batch-hard triplet variants, MetaBIN's meta-train losses,
SDA's GAN losses (LSGAN, cycle, identity, image pool), relation consistency, MMT's soft CE / soft
triplet and MoCo."""

from reidflow.losses.ce import CrossEntropyLabelSmooth
from reidflow.losses.gan import ImagePool, cycle_loss, discriminator_loss, identity_loss, lsgan_loss
from reidflow.losses.metabin import inter_domain_shuffle_loss, intra_domain_scatter_loss
from reidflow.losses.mmt import soft_cross_entropy, soft_triplet_loss
from reidflow.losses.moco import MoCoQueue, moco_loss
from reidflow.losses.relation import relation_consistency_loss
from reidflow.losses.snr import dual_causality_loss
from reidflow.losses.triplet import (
    SoftmaxTripletLoss,
    TripletLoss,
    batch_hard_distances,
    euclidean_dist,
    hard_example_mining,
)

__all__ = [
    "CrossEntropyLabelSmooth",
    "ImagePool",
    "MoCoQueue",
    "SoftmaxTripletLoss",
    "TripletLoss",
    "batch_hard_distances",
    "cycle_loss",
    "discriminator_loss",
    "dual_causality_loss",
    "euclidean_dist",
    "hard_example_mining",
    "identity_loss",
    "inter_domain_shuffle_loss",
    "intra_domain_scatter_loss",
    "lsgan_loss",
    "moco_loss",
    "relation_consistency_loss",
    "soft_cross_entropy",
    "soft_triplet_loss",
]
