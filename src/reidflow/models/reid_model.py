"""A backbone plus a re-ID head, and the JSON-serializable config that rebuilds it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.heads import BNNeck, build_classifier, build_pool

EvalFeatures = Literal["bn", "pre_bn"]


class ReIDModel(nn.Module):
    """backbone → pool → [embedding FC] → ``features`` → [BNNeck] → ``bn_features`` → classifier.

    ``forward(x, labels)`` in train mode returns ``{"features", "bn_features", "logits"}``
    (``features`` = pooled, pre-BNNeck: what the triplet loss uses; ``logits`` from the BNNeck
    output, with the ArcFace/CosFace margin applied when ``labels`` are given). In eval mode it
    returns one tensor: the post-BNNeck features, or the pre-BNNeck ones when
    ``eval_features="pre_bn"`` (set at construction or passed per call).

    ``embedding_dim`` adds Linear(C, D) + BatchNorm1d + ReLU after pooling (OSNet's 512-d FC).
    """

    def __init__(
        self,
        backbone: nn.Module,
        pool: str | nn.Module = "gem",
        neck: Literal["bnneck", "none"] = "bnneck",
        classifier: str = "linear",
        num_classes: int = 1,
        embedding_dim: int | None = None,
        *,
        gem_p: float = 3.0,
        classifier_scale: float | None = None,
        classifier_margin: float | None = None,
        eval_features: EvalFeatures = "bn",
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ConfigError(f"ReIDModel: backbone {type(backbone).__name__} has no out_channels attribute")
        self.backbone = backbone
        self.pool = build_pool(pool, gem_p=gem_p) if isinstance(pool, str) else pool
        feature_dim = int(backbone.out_channels)
        self.embedding: nn.Module | None = None
        if embedding_dim is not None:
            if embedding_dim <= 0:
                raise ConfigError(f"ReIDModel: embedding_dim must be > 0, got {embedding_dim}")
            self.embedding = nn.Sequential(
                nn.Linear(feature_dim, embedding_dim), nn.BatchNorm1d(embedding_dim), nn.ReLU(inplace=True)
            )
            nn.init.kaiming_normal_(self.embedding[0].weight, mode="fan_out")
            nn.init.zeros_(self.embedding[0].bias)
            feature_dim = embedding_dim
        if neck == "bnneck":
            self.neck: nn.Module = BNNeck(feature_dim)
        elif neck == "none":
            self.neck = nn.Identity()
        else:
            raise ConfigError(f"ReIDModel: unknown neck {neck!r}; known necks: bnneck, none")
        self.classifier = build_classifier(
            classifier, feature_dim, num_classes, classifier_scale, classifier_margin
        )
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.eval_features = _check_eval_features(eval_features)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, eval_features: EvalFeatures | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.pool(self.backbone(x))
        if self.embedding is not None:
            features = self.embedding(features)
        if not self.training:
            which = _check_eval_features(eval_features or self.eval_features)
            return features if which == "pre_bn" else self.neck(features)
        bn_features = self.neck(features)
        return {
            "features": features,
            "bn_features": bn_features,
            "logits": self.classifier(bn_features, labels),
        }


def _check_eval_features(value: str) -> EvalFeatures:
    if value not in ("bn", "pre_bn"):
        raise ConfigError(f"ReIDModel: eval_features must be 'bn' or 'pre_bn', got {value!r}")
    return value  # type: ignore[return-value]


class ModelConfig(BaseModel):
    """Everything needed to rebuild a :class:`ReIDModel`; round-trips through JSON."""

    model_config = ConfigDict(extra="forbid")

    backbone: str
    norm: str = "bn"
    last_stride: Literal[1, 2] = 1
    pool: Literal["gem", "avg", "max"] = "gem"
    gem_p: float = Field(3.0, gt=0)
    neck: Literal["bnneck", "none"] = "bnneck"
    classifier: Literal["linear", "arcface", "cosface"] = "linear"
    classifier_scale: float | None = Field(None, gt=0)
    classifier_margin: float | None = Field(None, ge=0)
    num_classes: int = Field(gt=0)
    embedding_dim: int | None = Field(None, gt=0)
    pretrained: str | None = None
    eval_features: EvalFeatures = "bn"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "model") -> ModelConfig:
        """Validate ``data``; errors become a ConfigError naming ``where.<key>`` and the problem."""
        from reidflow.config import validate_as

        return validate_as(cls, data, where)


def build_reid_model(cfg: ModelConfig | Mapping[str, Any]) -> ReIDModel:
    """Build the backbone (loading ``cfg.pretrained`` into it if set) and the head."""
    from reidflow.models.registry import build_backbone

    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_mapping(cfg)
    backbone = build_backbone(
        cfg.backbone, norm=cfg.norm, last_stride=cfg.last_stride, pretrained=cfg.pretrained
    )
    return ReIDModel(
        backbone,
        pool=cfg.pool,
        neck=cfg.neck,
        classifier=cfg.classifier,
        num_classes=cfg.num_classes,
        embedding_dim=cfg.embedding_dim,
        gem_p=cfg.gem_p,
        classifier_scale=cfg.classifier_scale,
        classifier_margin=cfg.classifier_margin,
        eval_features=cfg.eval_features,
    )
