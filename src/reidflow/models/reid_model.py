"""A backbone plus a re-ID head, and the JSON-serializable config that rebuilds it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.heads import BNNeck, build_classifier, build_pool
from reidflow.models.snr import build_snr_modules, check_snr_stages, snr_stages_problem

EvalFeatures = Literal["bn", "pre_bn"]


class ReIDModel(nn.Module):
    """backbone → pool → [embedding FC] → ``features`` → [BNNeck] → ``bn_features`` → classifier.

    ``forward(x, labels)`` in train mode returns ``{"features", "bn_features", "logits"}``
    (``features`` = pooled, pre-BNNeck: what the triplet loss uses; ``logits`` from the BNNeck
    output, with the ArcFace/CosFace margin applied when ``labels`` are given). In eval mode it
    returns one tensor: the post-BNNeck features, or the pre-BNNeck ones when
    ``eval_features="pre_bn"`` (set at construction or passed per call).

    ``embedding_dim`` adds Linear(C, D) + BatchNorm1d + ReLU after pooling (OSNet's 512-d FC).

    ``snr_stages`` (subset of 1-3) inserts an SNR module (child ``snr``, keys ``stage<s>``) after
    those backbone stages; the network continues with the restituted map. In train mode the output
    dict then also holds ``"snr"``: one ``(normalized, restituted, contaminated)`` triple of
    globally average-pooled N×C features per module, in stage order (for the dual causality loss).
    Without SNR the forward is the plain ``backbone(x)`` path.
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
        snr_stages: Sequence[int] = (),
        snr_reduction: int = 16,
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ConfigError(f"ReIDModel: backbone {type(backbone).__name__} has no out_channels attribute")
        self.backbone = backbone
        self.snr_stages = check_snr_stages(snr_stages)
        self.snr: nn.ModuleDict | None = (
            build_snr_modules(backbone, self.snr_stages, snr_reduction) if self.snr_stages else None
        )
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
    ) -> torch.Tensor | dict[str, Any]:
        snr_features: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        feature_map = self.backbone(x) if self.snr is None else self._forward_with_snr(x, snr_features)
        features = self.pool(feature_map)
        if self.embedding is not None:
            features = self.embedding(features)
        if not self.training:
            which = _check_eval_features(eval_features or self.eval_features)
            return features if which == "pre_bn" else self.neck(features)
        bn_features = self.neck(features)
        outputs: dict[str, Any] = {
            "features": features,
            "bn_features": bn_features,
            "logits": self.classifier(bn_features, labels),
        }
        if self.snr is not None:
            outputs["snr"] = snr_features
        return outputs

    def _forward_with_snr(
        self, x: torch.Tensor, pooled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Stem and stages with the restituted map after each SNR stage; appends pooled triples in training."""
        x = self.backbone.forward_stem(x)
        for index, stage in enumerate(self.backbone.stage_modules(), start=1):
            x = stage(x)
            key = f"stage{index}"
            if key not in self.snr:
                continue
            out = self.snr[key](x)
            x = out.restituted
            if self.training:
                pooled.append(
                    (_global_avg(out.normalized), _global_avg(out.restituted), _global_avg(out.contaminated))
                )
        return x


def _global_avg(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.mean(dim=(2, 3))


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
    snr_stages: list[StrictInt] = Field(default_factory=list)
    snr_reduction: int = Field(16, gt=0)

    @field_validator("snr_stages")
    @classmethod
    def _valid_snr_stages(cls, value: list[int]) -> list[int]:
        problem = snr_stages_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "model") -> ModelConfig:
        """Validate ``data``; errors become a ConfigError naming ``where.<key>`` and the problem."""
        from reidflow.config import validate_as

        return validate_as(cls, data, where)


def build_reid_model(cfg: ModelConfig | Mapping[str, Any]) -> ReIDModel:
    """Build the backbone (loading ``cfg.pretrained`` into it if set) and the head.

    ``{backbone}`` in ``cfg.pretrained`` becomes the backbone's name, so one setting serves a chain
    over several backbones (``weights/{backbone}.safetensors``).
    """
    from reidflow.models.registry import build_backbone

    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_mapping(cfg)
    pretrained = cfg.pretrained.replace("{backbone}", cfg.backbone) if cfg.pretrained else None
    backbone = build_backbone(cfg.backbone, norm=cfg.norm, last_stride=cfg.last_stride, pretrained=pretrained)
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
        snr_stages=cfg.snr_stages,
        snr_reduction=cfg.snr_reduction,
    )
