"""Multi-node training: a Kubeflow PyTorchJob (kubeflow.org/v1) per training task (no kfp import here).

:func:`pytorchjob_manifest` builds the job for a ``reidflow <stage>`` command: one Master and
``nodes - 1`` Workers, each running ``torchrun`` with one process per GPU. The training operator sets
``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` (number of pods) and ``RANK`` (pod index) in every
pod; torchrun turns them into ``--nnodes``/``--node_rank``/rendezvous. The params YAML travels in an
environment variable, so the job needs no ConfigMap. Stage outputs must go to S3 (``artifact_root``):
the job's pods cannot see the KFP task's local artifact directory.

:func:`apply_and_wait` creates the job with the Kubernetes client and waits for it; the component in
:mod:`components.pretrain_multinode` does both from inside a pipeline (its service account needs create/get/delete
on ``pytorchjobs.kubeflow.org``).
"""

import re
import shlex
import time
from typing import Any

from components.settings import KfpConfig
from reidflow.errors import ConfigError, ReidflowError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
PARAMS_ENV = "REIDFLOW_PARAMS_YAML"
PARAMS_PATH = "/tmp/reidflow-params.yaml"
SHM_VOLUME = "dshm"


def job_name(*parts: str) -> str:
    """A DNS-1123 name (<= 63 chars) from ``parts``."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:63].rstrip("-")
    if not name or not name[0].isalpha():
        name = ("job-" + name)[:63].rstrip("-")
    return name


def torchrun_shell(nproc_per_node: int, cli_args: list[str]) -> str:
    """The pod's shell command: write params from the env, then torchrun the reidflow CLI."""
    args = " ".join(shlex.quote(a) for a in cli_args)
    return (
        f'printf "%s" "${PARAMS_ENV}" > {PARAMS_PATH} && exec torchrun '
        f'--nnodes="$WORLD_SIZE" --node_rank="$RANK" --nproc_per_node={nproc_per_node} '
        f'--master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m reidflow.cli {args}'
    )


def pytorchjob_manifest(
    *,
    name: str,
    namespace: str,
    image: str,
    cli_args: list[str],
    params_yaml: str,
    nodes: int,
    cfg: KfpConfig,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The PyTorchJob running ``reidflow <cli_args>`` on ``nodes`` pods with ``cfg.gpus`` GPUs each."""
    if nodes < 1:
        raise ConfigError(f"kfp.distributed.nodes: expected >= 1, got {nodes}")
    if "--params" not in cli_args or cli_args[cli_args.index("--params") + 1] != PARAMS_PATH:
        raise ConfigError(f"PyTorchJob command must read --params {PARAMS_PATH} (written from ${PARAMS_ENV})")
    nproc = max(cfg.gpus, 1)
    res = cfg.train_resources
    limits: dict[str, Any] = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if cfg.gpus > 0:
        limits[cfg.accelerator_type] = cfg.gpus
    container_env: list[dict[str, Any]] = [{"name": PARAMS_ENV, "value": params_yaml}]
    container_env += [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    if cfg.s3_secret is not None:
        container_env += [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": cfg.s3_secret.name, "key": key}}}
            for key, var in cfg.s3_secret.keys.items()
        ]
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "pytorch",  # the training operator finds the container by this name
                "image": image,
                "command": ["sh", "-c", torchrun_shell(nproc, cli_args)],
                "env": container_env,
                "resources": {
                    "requests": {"cpu": res.cpu_request, "memory": res.memory_request},
                    "limits": limits,
                },
                "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}],
    }
    if cfg.node_selector:
        pod_spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        pod_spec["tolerations"] = [
            {
                k: v
                for k, v in {
                    "key": t.key,
                    "operator": t.operator,
                    "value": t.value,
                    "effect": t.effect,
                    "tolerationSeconds": t.toleration_seconds,
                }.items()
                if v is not None
            }
            for t in cfg.tolerations
        ]

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": pod_spec}}

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {
            "name": job_name(name),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "reidflow"},
        },
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": cfg.retry.num_retries},
            "pytorchReplicaSpecs": replicas,
        },
    }


def job_state(job: dict[str, Any]) -> str | None:
    """'Succeeded' / 'Failed' once the job finished, else None (from its status conditions)."""
    for cond in reversed((job.get("status") or {}).get("conditions") or []):
        if cond.get("status") == "True" and cond.get("type") in ("Succeeded", "Failed"):
            return str(cond["type"])
    return None


def apply_and_wait(manifest: dict[str, Any], timeout_seconds: int, poll_seconds: float = 15.0) -> None:
    """Create the PyTorchJob (in-cluster credentials) and block until it succeeds; raise if it fails."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = job_state(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        if state == "Succeeded":
            return
        if state == "Failed":
            raise ReidflowError(
                f"PyTorchJob {namespace}/{name} failed: kubectl -n {namespace} describe pytorchjob {name}"
            )
        time.sleep(poll_seconds)
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    raise ReidflowError(f"PyTorchJob {namespace}/{name} did not finish within {timeout_seconds} s (deleted)")
