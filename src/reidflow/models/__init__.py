"""Model zoo: backbones by name, one norm factory, re-ID heads, pretrained-weight loading,
SDA's GAN networks."""

from reidflow.models.heads import (
    ArcFace,
    BNNeck,
    CosFace,
    GeM,
    LinearClassifier,
    build_classifier,
    build_pool,
)
from reidflow.models.norms import (
    BatchInstanceNorm2d,
    InstanceBatchNorm2d,
    InstanceNorm2d,
    clamp_gates_,
    convert_norms,
    list_norms,
    make_norm,
    register_norm,
)
from reidflow.models.pretrained import LoadReport, load_pretrained
from reidflow.models.registry import build_backbone, list_backbones, register_backbone
from reidflow.models.reid_model import ModelConfig, ReIDModel, build_reid_model
from reidflow.models.sda import build_gan_network, list_gan_networks, register_gan_network

__all__ = [
    "ArcFace",
    "BNNeck",
    "BatchInstanceNorm2d",
    "CosFace",
    "GeM",
    "InstanceBatchNorm2d",
    "InstanceNorm2d",
    "LinearClassifier",
    "LoadReport",
    "ModelConfig",
    "ReIDModel",
    "build_backbone",
    "build_classifier",
    "build_gan_network",
    "build_pool",
    "build_reid_model",
    "clamp_gates_",
    "convert_norms",
    "list_backbones",
    "list_gan_networks",
    "list_norms",
    "load_pretrained",
    "make_norm",
    "register_backbone",
    "register_gan_network",
    "register_norm",
]
