"""The ``kfp:`` section of params.yaml: how the pipeline runs on a cluster (image, resources, storage).

Nothing here changes what a stage computes; it only says where and how it runs, so it lives beside
the components rather than in the stage configs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from reidflow.config import StrictModel, section
from reidflow.errors import ConfigError

SECTION = "kfp"

MIN_BACKEND_VERSION = (2, 14, 0)
"""The oldest Kubeflow Pipelines *backend* this pipeline runs on: its fan-ins use ``dsl.Collected``,
which older backends reject (Kubeflow 1.9 ships KFP 2.2, 1.10 ships 2.4). ``pipeline submit`` checks
it when the API server reports its version."""


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
    """A Kubernetes secret holding the S3 credentials; its keys are mapped to the AWS_* variables.

    Keys in ``optional`` may be absent from the secret (AWS users set no endpoint): a required key
    that is missing fails the pod before it starts (CreateContainerConfigError).
    """

    name: str = "reidflow-s3"
    keys: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
            "AWS_REGION": "AWS_REGION",
        },
        description="secret key -> environment variable",
    )
    optional: list[str] = Field(
        default_factory=lambda: ["AWS_ENDPOINT_URL", "AWS_REGION"],
        description="secret keys that may be missing from the secret",
    )

    @field_validator("keys")
    @classmethod
    def _maps_aws_credentials(cls, keys: dict[str, str]) -> dict[str, str]:
        missing = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} - set(keys.values())
        if missing:
            raise ValueError(f"must map secret keys onto {sorted(missing)}")
        return keys

    @model_validator(mode="after")
    def _optional_keys_are_mapped(self) -> S3Secret:
        unknown = sorted(set(self.optional) - set(self.keys))
        if unknown:
            raise ValueError(f"optional names {unknown}, which are not under keys: {sorted(self.keys)}")
        return self

    def split(self) -> tuple[dict[str, str], dict[str, str]]:
        """(required key -> variable, optional key -> variable)."""
        required = {k: v for k, v in self.keys.items() if k not in self.optional}
        optional = {k: v for k, v in self.keys.items() if k in self.optional}
        return required, optional


class Timeouts(StrictModel):
    """activeDeadlineSeconds of the task pods (0: none); a hung task fails instead of holding its node."""

    default_seconds: int = Field(6 * 3600, ge=0, description="every task that does not train")
    training_seconds: int = Field(3 * 24 * 3600, ge=0, description="training tasks (GPUs)")


class Checkpoints(StrictModel):
    """Training checkpoints kept in the artifact store, so a retried pod resumes where it stopped.

    The store is ``<output>.ckpt`` beside the task's output on S3 (stable across retries of a task in
    a run); a task whose output is pod-local keeps them only in the pod. Checkpoints are written every
    ``<section>.engine.checkpoint_every`` iterations (set it: the default writes only the last one).
    """

    enabled: bool = True
    sync_interval_seconds: float = Field(30.0, gt=0, description="how often new checkpoints are uploaded")


class Metrics(StrictModel):
    """Prometheus metrics of the task pods (see docs/kubernetes.md, "Where to look")."""

    pushgateway_url: str | None = Field(None, description="Pushgateway the stages push to")
    push_interval_seconds: float = Field(
        30.0, ge=0, description="push during a run every N seconds (0: only when the stage ends)"
    )
    port: int | None = Field(None, ge=1, le=65535, description="serve /metrics in the pod on this port")
    address: str = Field("0.0.0.0", description="address /metrics binds to (0.0.0.0: scrapeable in a pod)")


class Distributed(StrictModel):
    """Multi-node training (nodes > 1) as a Kubeflow Training Operator PyTorchJob (kubeflow.org/v1) or a
    Kubeflow Trainer v2 TrainJob; one pod with torchrun otherwise."""

    nodes: int = Field(1, ge=1)
    backend: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    namespace: str | None = Field(
        None, description="default: the namespace of the pipeline's pods (the profile namespace)"
    )
    timeout_seconds: int = Field(7 * 24 * 3600, ge=60)
    ttl_seconds_after_finished: int = Field(24 * 3600, ge=0, description="job kept this long after it ends")
    runtime: str = Field("torch-distributed", description="TrainJob: the ClusterTrainingRuntime to use")


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
    pushgateway_url: str | None = Field(None, description="shortcut for metrics.pushgateway_url")
    metrics: Metrics = Field(default_factory=Metrics)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    distributed: Distributed = Field(default_factory=Distributed)

    @property
    def pushgateway(self) -> str | None:
        return self.metrics.pushgateway_url or self.pushgateway_url

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
