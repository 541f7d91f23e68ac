"""Multi-node training jobs (no kfp import here): a Training Operator PyTorchJob (``kubeflow.org/v1``)
or a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``) per training task.

Both run ``torchrun -m reidflow.cli <stage> …`` on ``nodes`` pods with ``kfp.gpus`` processes each.
The PyTorchJob gets ``nprocPerNode``, so the operator sets ``WORLD_SIZE`` = pods × processes and the
``PET_NNODES``/``PET_NODE_RANK``/``PET_NPROC_PER_NODE`` variables; Trainer v2 sets only ``PET_*``
(``PET_MASTER_ADDR``/``PET_MASTER_PORT`` included). :func:`torchrun_shell` reads the ``PET_*``
variables and falls back to the Training Operator's ``MASTER_*``/``WORLD_SIZE``/``RANK``, so one
command serves both. Every pod is annotated ``sidecar.istio.io/inject: "false"`` (an Istio sidecar in
a Kubeflow profile namespace blocks the rendezvous and keeps finished pods running); the job is owned
by the KFP task's pod (deleted with it) and, for PyTorchJob, removed ``ttl_seconds_after_finished``
after it ends. The params YAML travels in an environment variable, so the job needs no ConfigMap.
Stage outputs must go to S3 (``artifact_root``): the job's pods cannot see the KFP task's pod.

:func:`apply_and_wait` creates the job with the Kubernetes client and waits for it; a retried KFP task
finds the job of its previous attempt (same name: run, task and item) and waits for that one instead
of failing with 409, unless it failed (then it is replaced).
"""

import hashlib
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from components.settings import KfpConfig
from reidflow.errors import ConfigError, ReidflowError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
TRAINER_GROUP, TRAINER_VERSION, TRAINER_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
PARAMS_ENV = "REIDFLOW_PARAMS_YAML"
PARAMS_PATH = "/tmp/reidflow-params.yaml"
SHM_VOLUME = "dshm"
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
LABELS = {"app.kubernetes.io/part-of": "reidflow"}
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def job_name(*parts: str) -> str:
    """A DNS-1123 name (<= 63 chars) from ``parts``; a truncated name keeps a hash of the whole."""
    full = "-".join(p for p in parts if p)
    name = re.sub(r"[^a-z0-9-]+", "-", full.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = "job-" + name
    if len(name) > 63:
        name = name[:54].rstrip("-") + "-" + hashlib.sha256(full.encode()).hexdigest()[:8]
    return name.rstrip("-")


def torchrun_shell(nproc_per_node: int, cli_args: list[str]) -> str:
    """The pod's shell command: write params from the env, then torchrun the reidflow CLI."""
    args = " ".join(shlex.quote(a) for a in cli_args)
    return (
        f'printf "%s" "${PARAMS_ENV}" > {PARAMS_PATH} && exec torchrun '
        '--nnodes="${PET_NNODES:-$WORLD_SIZE}" --node_rank="${PET_NODE_RANK:-$RANK}" '
        f"--nproc_per_node={nproc_per_node} "
        '--master_addr="${PET_MASTER_ADDR:-$MASTER_ADDR}" --master_port="${PET_MASTER_PORT:-$MASTER_PORT}" '
        f"-m reidflow.cli {args}"
    )


def pod_namespace() -> str | None:
    """The namespace this pod runs in (the KFP profile namespace), from its service account."""
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


def owner_reference() -> dict[str, Any] | None:
    """The KFP task's pod as the job's owner (KFP sets KFP_POD_NAME/KFP_POD_UID in its executor)."""
    name, uid = os.environ.get("KFP_POD_NAME"), os.environ.get("KFP_POD_UID")
    if not name or not uid:
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "blockOwnerDeletion": False}


def _check_command(cli_args: list[str], nodes: int) -> None:
    if nodes < 1:
        raise ConfigError(f"kfp.distributed.nodes: expected >= 1, got {nodes}")
    if "--params" not in cli_args or cli_args[cli_args.index("--params") + 1] != PARAMS_PATH:
        raise ConfigError(f"the job's command must read --params {PARAMS_PATH} (written from ${PARAMS_ENV})")


def _env(params_yaml: str, env: dict[str, str] | None, cfg: KfpConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": PARAMS_ENV, "value": params_yaml}]
    out += [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    if cfg.s3_secret is not None:
        for key, var in cfg.s3_secret.keys.items():
            ref: dict[str, Any] = {"name": cfg.s3_secret.name, "key": key}
            if key in cfg.s3_secret.optional:
                ref["optional"] = True
            out.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    return out


def _resources(cfg: KfpConfig) -> dict[str, Any]:
    res = cfg.train_resources
    limits: dict[str, Any] = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if cfg.gpus > 0:
        limits[cfg.accelerator_type] = cfg.gpus
    return {"requests": {"cpu": res.cpu_request, "memory": res.memory_request}, "limits": limits}


def _placement(cfg: KfpConfig) -> dict[str, Any]:
    """Node selector, tolerations and the memory-backed /dev/shm volume of a training pod."""
    spec: dict[str, Any] = {
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}]
    }
    if cfg.node_selector:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        spec["tolerations"] = [
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
    return spec


def _metadata(name: str, namespace: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": job_name(name), "namespace": namespace, "labels": dict(LABELS)}
    if owner:
        meta["ownerReferences"] = [owner]
    return meta


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
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The PyTorchJob running ``reidflow <cli_args>`` on ``nodes`` pods with ``cfg.gpus`` GPUs each."""
    _check_command(cli_args, nodes)
    nproc = max(cfg.gpus, 1)
    placement = _placement(cfg)
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "pytorch",  # the training operator finds the container by this name
                "image": image,
                "command": ["sh", "-c", torchrun_shell(nproc, cli_args)],
                "env": _env(params_yaml, env, cfg),
                "resources": _resources(cfg),
                "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
            }
        ],
        **placement,
    }

    def replica(count: int) -> dict[str, Any]:
        template = {"metadata": {"annotations": dict(POD_ANNOTATIONS)}, "spec": pod_spec}
        return {"replicas": count, "restartPolicy": "OnFailure", "template": template}

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": _metadata(name, namespace, owner),
        "spec": {
            "nprocPerNode": str(nproc),
            "runPolicy": {
                "cleanPodPolicy": "Running",
                "backoffLimit": cfg.retry.num_retries,
                "ttlSecondsAfterFinished": cfg.distributed.ttl_seconds_after_finished,
                "activeDeadlineSeconds": cfg.distributed.timeout_seconds,
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


def trainjob_manifest(
    *,
    name: str,
    namespace: str,
    image: str,
    cli_args: list[str],
    params_yaml: str,
    nodes: int,
    cfg: KfpConfig,
    env: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Kubeflow Trainer v2 TrainJob (runtime ``kfp.distributed.runtime``, e.g. torch-distributed)
    running the same command; placement and /dev/shm go through ``podTemplateOverrides`` of the
    runtime's ``node`` job (Trainer >= 2.1)."""
    _check_command(cli_args, nodes)
    nproc = max(cfg.gpus, 1)
    placement = _placement(cfg)
    override_spec = {
        **placement,
        "containers": [{"name": "node", "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]}],
    }
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": _metadata(name, namespace, owner),
        "spec": {
            "runtimeRef": {"name": cfg.distributed.runtime},
            "trainer": {
                "image": image,
                "command": ["sh", "-c", torchrun_shell(nproc, cli_args)],
                "env": _env(params_yaml, env, cfg),
                "numNodes": nodes,
                "numProcPerNode": nproc,
                "resourcesPerNode": _resources(cfg),
            },
            "podTemplateOverrides": [
                {
                    "targetJobs": [{"name": "node"}],
                    "metadata": {"annotations": dict(POD_ANNOTATIONS)},
                    "spec": override_spec,
                }
            ],
        },
    }


def job_manifest(backend: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`pytorchjob_manifest` or :func:`trainjob_manifest` by ``kfp.distributed.backend``."""
    if backend == "pytorchjob":
        return pytorchjob_manifest(**kwargs)
    if backend == "trainjob":
        return trainjob_manifest(**kwargs)
    raise ConfigError(f"kfp.distributed.backend {backend!r}: expected pytorchjob or trainjob")


def job_state(job: dict[str, Any]) -> str | None:
    """'Succeeded' / 'Failed' once the job finished, else None (PyTorchJob: Succeeded/Failed
    conditions; TrainJob: Complete/Failed)."""
    for cond in reversed((job.get("status") or {}).get("conditions") or []):
        if cond.get("status") == "True" and cond.get("type") in ("Succeeded", "Complete", "Failed"):
            return "Failed" if cond["type"] == "Failed" else "Succeeded"
    return None


def _api_coordinates(manifest: dict[str, Any]) -> tuple[str, str, str]:
    group, _, version = manifest["apiVersion"].partition("/")
    plural = {"PyTorchJob": PLURAL, "TrainJob": TRAINER_PLURAL}[manifest["kind"]]
    return group, version, plural


def apply_and_wait(manifest: dict[str, Any], timeout_seconds: int, poll_seconds: float = 15.0) -> None:
    """Create the job (in-cluster credentials) or adopt the one a previous attempt created, and block
    until it succeeds; raise if it fails or times out (then it is deleted)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    group, version, plural = _api_coordinates(manifest)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    kind = manifest["kind"]

    def get() -> dict[str, Any]:
        return api.get_namespaced_custom_object(group, version, namespace, plural, name)

    try:
        api.create_namespaced_custom_object(group, version, namespace, plural, manifest)
    except ApiException as exc:
        if exc.status != 409:
            raise
        if job_state(get()) == "Failed":  # the previous attempt's job failed: start over
            api.delete_namespaced_custom_object(group, version, namespace, plural, name)
            _wait_gone(get, poll_seconds)
            api.create_namespaced_custom_object(group, version, namespace, plural, manifest)
        else:
            print(f"reidflow: adopting {kind} {namespace}/{name} of a previous attempt", flush=True)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = job_state(get())
        if state == "Succeeded":
            return
        if state == "Failed":
            raise ReidflowError(
                f"{kind} {namespace}/{name} failed: kubectl -n {namespace} describe {plural} {name}"
            )
        time.sleep(poll_seconds)
    api.delete_namespaced_custom_object(group, version, namespace, plural, name)
    raise ReidflowError(f"{kind} {namespace}/{name} did not finish within {timeout_seconds} s (deleted)")


def _wait_gone(get: Any, poll_seconds: float, attempts: int = 40) -> None:
    from kubernetes.client.exceptions import ApiException

    for _ in range(attempts):
        try:
            get()
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(poll_seconds)
    raise ReidflowError("the failed job of a previous attempt is still being deleted; retry the task")
