"""The ``kfp:`` section of params.yaml: how the pipeline runs on a cluster (image, resources, storage).

Nothing here changes what a stage computes; it only says where and how it runs, so it lives beside
the components rather than in the stage configs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from reidflow.config import StrictModel, section
from reidflow.errors import ConfigError

SECTION = "kfp"


class Resources(StrictModel):
    """Kubernetes requests/limits of one task (quantities as Kubernetes writes them: "4", "500m", "16Gi")."""

    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "2Gi"
    memory_limit: str = "4Gi"


class Toleration(StrictModel):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None
    toleration_seconds: int | None = None


class RetryPolicy(StrictModel):
    """Task retries with exponential backoff (transient node, spot or S3 failures)."""

    num_retries: int = Field(2, ge=0)
    backoff_duration: str = "60s"
    backoff_factor: float = Field(2.0, ge=1)
    backoff_max_duration: str = "3600s"


class S3Secret(StrictModel):
    """A Kubernetes secret holding the S3 credentials; its keys are mapped to the AWS_* variables."""

    name: str = "reidflow-s3"
    keys: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
        },
        description="secret key -> environment variable",
    )

    @field_validator("keys")
    @classmethod
    def _maps_aws_credentials(cls, keys: dict[str, str]) -> dict[str, str]:
        missing = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} - set(keys.values())
        if missing:
            raise ValueError(f"must map secret keys onto {sorted(missing)}")
        return keys


class Distributed(StrictModel):
    """Multi-node training through a Kubeflow PyTorchJob (nodes > 1); one pod with torchrun otherwise."""

    nodes: int = Field(1, ge=1)
    namespace: str = "kubeflow"
    timeout_seconds: int = Field(7 * 24 * 3600, ge=60)


class KfpConfig(StrictModel):
    image: str | None = Field(None, description="image reference; REIDFLOW_IMAGE overrides it (pin a digest)")
    pipeline_name: str = Field("reidflow", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    artifact_root: str = Field(
        "", description="'' = KFP's artifact store; s3://bucket/prefix = stages write there"
    )
    datasets: list[str] | None = Field(None, description="names under 'datasets:' to shard (default: all)")
    backbones: list[str] | None = Field(
        None, description="pretrain fan-out (default: pretrain.model.backbone)"
    )
    synth_root: str = Field("data/synth", description="dataset roots under this path read the synth artifact")
    gpus: int = Field(1, ge=0, description="GPUs per training pod (torchrun --nproc_per_node when > 1)")
    accelerator_type: str = "nvidia.com/gpu"
    train_resources: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="4", cpu_limit="8", memory_request="16Gi", memory_limit="32Gi"
        )
    )
    default_resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, description="labels training pods must match")
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    shm_size: str = Field("8Gi", description="memory-backed /dev/shm for DataLoader workers")
    s3_secret: S3Secret | None = Field(default_factory=S3Secret)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    caching: bool = True
    pushgateway_url: str | None = Field(None, description="Prometheus Pushgateway the stages push to")
    distributed: Distributed = Field(default_factory=Distributed)

    @field_validator("artifact_root")
    @classmethod
    def _s3_or_empty(cls, value: str) -> str:
        if value and not value.startswith("s3://"):
            raise ValueError("expected '' (KFP's artifact store) or s3://bucket/prefix")
        return value.rstrip("/")


def kfp_config(params: dict[str, Any], source: str = "params.yaml") -> KfpConfig:
    return section(params, SECTION, KfpConfig, source=source)


def pipeline_datasets(params: dict[str, Any], cfg: KfpConfig, source: str = "params.yaml") -> list[str]:
    """Dataset names the pipeline shards, in order; each must exist under ``datasets:``."""
    known = list((params.get("datasets") or {}).keys())
    chosen = cfg.datasets if cfg.datasets is not None else known
    unknown = [d for d in chosen if d not in known]
    if unknown:
        raise ConfigError(f"{source}: kfp.datasets names {unknown} not under 'datasets:' (known: {known})")
    if not chosen:
        raise ConfigError(f"{source}: no datasets to shard: add entries under 'datasets:' (or kfp.datasets)")
    return chosen


def pipeline_backbones(params: dict[str, Any], cfg: KfpConfig, source: str = "params.yaml") -> list[str]:
    """Backbones the pretrain stage fans out over: kfp.backbones, else the top-level ``backbones:``
    list dvc.yaml fans out over, else pretrain.model.backbone."""
    if cfg.backbones:
        return list(cfg.backbones)
    shared = params.get("backbones")
    if shared:
        if not isinstance(shared, list) or not all(isinstance(b, str) for b in shared):
            raise ConfigError(f"{source}: backbones: expected a list of backbone names, got {shared!r}")
        return list(shared)
    backbone = ((params.get("pretrain") or {}).get("model") or {}).get("backbone")
    if not backbone:
        raise ConfigError(f"{source}: no backbone to train: set kfp.backbones or pretrain.model.backbone")
    return [str(backbone)]
