"""What the components do inside a pod, without a cluster: the local pod sandbox, checkpoints kept
in the artifact store, live metrics, the multi-node jobs and authenticated submission."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from components import checkpoints, pytorchjob, sandbox
from components.settings import KfpConfig
from pipelines.runner import Auth, check_backend_version, parse_version

from reidflow.errors import ConfigError, ReidflowError
from reidflow.obs import live as observe

# ---- the local pod sandbox ----


class LocalArtifact:
    """A kfp.dsl artifact as kfp.local hands it over: the uri is a local path; ``custom_path``
    moves ``path`` without touching ``uri`` (as kfp's Artifact does)."""

    def __init__(self, uri: Path) -> None:
        self.uri = str(uri)
        self.custom_path = ""
        self.metadata: dict[str, Any] = {}

    @property
    def path(self) -> str:
        return self.custom_path or self.uri


def test_sandbox_moves_outputs_into_a_private_dir_and_uploads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.ISOLATE_ENV, "1")
    monkeypatch.chdir(tmp_path)
    model, report = LocalArtifact(tmp_path / "root" / "model"), LocalArtifact(tmp_path / "root" / "report")
    with sandbox.pod(model, report) as pod:
        assert pod is not None and Path.cwd() == pod / "work"
        assert Path(model.path).is_relative_to(pod) and model.uri == str(tmp_path / "root" / "model")
        Path(model.path).mkdir()
        (Path(model.path) / "weights.bin").write_bytes(b"w")
        Path(report.path).write_text("<html/>")
        leaked = model.path
    assert not Path(leaked).exists(), "the pod's paths vanish with the task"
    assert (tmp_path / "root" / "model" / "weights.bin").read_bytes() == b"w"
    assert (tmp_path / "root" / "report").read_text() == "<html/>"
    assert model.path == model.uri and Path.cwd() == tmp_path
    monkeypatch.setenv(sandbox.ISOLATE_ENV, "0")
    with sandbox.pod(model) as pod:
        assert pod is None and model.path == model.uri


def test_sandbox_uploads_nothing_when_the_task_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ISOLATE_ENV, "1")
    model = LocalArtifact(tmp_path / "model")
    with pytest.raises(RuntimeError), sandbox.pod(model):
        Path(model.path).mkdir()
        raise RuntimeError("stage failed")
    assert not (tmp_path / "model").exists()


# ---- checkpoints in the artifact store ----


def fake_checkpoint(root: Path, iteration: int) -> Path:
    """A checkpoint directory as the engine lays it out (complete: state.json present)."""
    path = root / f"ckpt-{iteration:08d}"
    path.mkdir(parents=True)
    (path / "state.json").write_text(json.dumps({"iteration": iteration}))
    (path / "model-model.safetensors").write_bytes(bytes([iteration]) * 32)
    (root / "latest").write_text(path.name + "\n")
    return path


def roundtrip(store_uri: str, tmp_path: Path) -> None:
    """Pod 1 trains and syncs; pod 2 (fresh disk) restores the newest checkpoint; success clears."""
    pod1 = tmp_path / "pod1" / "ckpt"
    sync = checkpoints.CheckpointSync(checkpoints.CheckpointStore(store_uri), pod1, interval_s=3600)
    assert sync.restore() is None, "a fresh task finds nothing to resume"
    fake_checkpoint(pod1, 2)
    assert sync.sync_once() and not sync.sync_once(), "each checkpoint is uploaded once"
    fake_checkpoint(pod1, 4)
    assert sync.sync_once()
    assert sync.store.latest() == "ckpt-00000004"

    pod2 = tmp_path / "pod2" / "ckpt"  # the retried task: same store, empty local disk
    again = checkpoints.CheckpointSync(checkpoints.CheckpointStore(store_uri), pod2, interval_s=3600)
    assert again.restore() == "ckpt-00000004"
    restored = checkpoints.local_latest(pod2)
    assert restored is not None and json.loads((restored / "state.json").read_text())["iteration"] == 4
    assert (restored / "model-model.safetensors").read_bytes() == bytes([4]) * 32
    assert not (pod2 / "ckpt-00000002").exists(), "older checkpoints are dropped from the store"
    again.store.clear()
    assert again.store.latest() is None


def test_checkpoints_survive_the_pod_in_a_local_store(tmp_path: Path) -> None:
    roundtrip(str(tmp_path / "store" / "model.ckpt"), tmp_path)


def test_checkpoints_survive_the_pod_in_s3(tmp_path: Path, s3_env: dict[str, str]) -> None:
    roundtrip(f"s3://{s3_env['BUCKET']}/kfp/run-1/pretrain/osnet.ckpt", tmp_path)


def test_the_sync_thread_uploads_while_training(tmp_path: Path) -> None:
    store = checkpoints.CheckpointStore(str(tmp_path / "store"))
    with checkpoints.CheckpointSync(store, tmp_path / "ckpt", interval_s=0.05) as sync:
        fake_checkpoint(tmp_path / "ckpt", 1)
        for _ in range(100):
            if store.latest():
                break
            threading.Event().wait(0.05)
    assert store.latest() == "ckpt-00000001" and sync.uploaded == "ckpt-00000001"


def test_where_a_task_keeps_its_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Art:
        uri = "minio://mlpipeline/v2/artifacts/reidflow/run/pretrain/x/model"

    s3_out = "s3://bkt/kfp/run-1/pretrain/osnet"
    assert checkpoints.store_uri_for(s3_out, Art()) == s3_out + ".ckpt"  # stable across retries
    assert checkpoints.store_uri_for("/minio/x/model", Art()) == (
        "s3://mlpipeline/v2/artifacts/reidflow/run/pretrain/x/model.ckpt"
    )
    Art.uri = "gs://bucket/x/model"
    assert checkpoints.store_uri_for("/gcs/bucket/x/model", Art()) is None
    sync = checkpoints.for_task(None, s3_out, Art())
    assert sync is not None and sync.store.uri == s3_out + ".ckpt"
    monkeypatch.setenv(checkpoints.SYNC_ENV, "0")
    assert checkpoints.for_task(None, s3_out, Art()) is None
    monkeypatch.delenv(checkpoints.SYNC_ENV)
    Art.uri = str(tmp_path / "model")  # a local run: the checkpoint dir already is the store
    assert checkpoints.for_task(None, str(tmp_path / "model"), Art()) is None


# ---- live metrics ----


class Gateway(BaseHTTPRequestHandler):
    """Records what a Pushgateway would receive."""

    pushes: ClassVar[list[tuple[str, str, str]]] = []

    def do_POST(self) -> None:
        self._record()

    def do_PUT(self) -> None:
        self._record()

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        Gateway.pushes.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def gateway() -> Any:
    Gateway.pushes = []
    server = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_metrics_are_pushed_during_the_run_with_the_run_id(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REIDFLOW_PUSHGATEWAY_URL", gateway)
    monkeypatch.setenv(observe.PUSH_INTERVAL_ENV, "0.05")
    with observe.observed("pretrain", "kfp-pretrain-osnet", run_id="run-42") as metrics:
        metrics.observe_step(losses={"ce": 1.5}, lrs={"model": 0.1}, seconds=0.1, samples=8)
        for _ in range(100):
            if Gateway.pushes:
                break
            threading.Event().wait(0.05)
    assert len(Gateway.pushes) >= 2, "at least one push while running and one at the end"

    def group(path: str) -> dict[str, str]:
        parts = path.removeprefix("/metrics/").split("/")
        return dict(zip(parts[::2], parts[1::2], strict=True))

    expected = {"job": "reidflow", "stage": "pretrain", "instance": "kfp-pretrain-osnet", "run_id": "run-42"}
    method, path, body = Gateway.pushes[0]
    assert method == "POST" and group(path) == expected  # progress: pushadd, no outcome
    assert "reidflow_loss" in body and "reidflow_last_success_timestamp_seconds" not in body
    method, path, body = Gateway.pushes[-1]
    assert method == "PUT" and group(path) == expected  # the end: the whole group, with the outcome
    assert "reidflow_last_success_timestamp_seconds" in body


def test_metrics_are_served_on_the_configured_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("REIDFLOW_PUSHGATEWAY_URL", raising=False)
    monkeypatch.setenv(observe.METRICS_ADDR_ENV, f"127.0.0.1:{port}")
    with observe.observed("evaluate", "kfp-evaluate", run_id="r") as metrics:
        metrics.observe_eval("night", "ensemble", 0.5, 0.7)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'reidflow_eval_map_ratio{model="ensemble",target="night"} 0.5' in text


# ---- multi-node jobs ----


def test_trainjob_for_kubeflow_trainer_v2() -> None:
    cfg = KfpConfig.model_validate({"gpus": 4, "distributed": {"nodes": 2, "backend": "trainjob"}})
    args = ["pretrain", "--params", pytorchjob.PARAMS_PATH, "--output", "s3://b/o"]
    job = pytorchjob.job_manifest(
        "trainjob",
        name="reidflow-run-pretrain",
        namespace="team-a",
        image="r.io/reid:1",
        cli_args=args,
        params_yaml="pretrain: {}\n",
        nodes=2,
        cfg=cfg,
    )
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    shell = trainer["command"][2]
    assert '"${PET_NNODES:-$WORLD_SIZE}"' in shell and '"${PET_MASTER_ADDR:-$MASTER_ADDR}"' in shell
    [override] = job["spec"]["podTemplateOverrides"]
    assert override["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert override["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert pytorchjob.job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == (
        "Succeeded"
    )
    with pytest.raises(ConfigError, match="backend"):
        pytorchjob.job_manifest("mpijob", name="x", namespace="n", image="i:1", cli_args=args,
                                params_yaml="", nodes=2, cfg=cfg)  # fmt: skip


def test_job_names_are_unique_per_run_task_and_item() -> None:
    a = pytorchjob.job_name("reidflow", "3f2a9c1e", "pretrain", "resnet50_ibn_a" + "x" * 60)
    b = pytorchjob.job_name("reidflow", "3f2a9c1e", "pretrain", "resnet50_ibn_a" + "x" * 60 + "y")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert pytorchjob.job_name("reidflow", "run1", "pretrain-2", "osnet") == "reidflow-run1-pretrain-2-osnet"


class FakeApi:
    """kubernetes.client.CustomObjectsApi with one existing job of a previous attempt."""

    def __init__(self, existing: dict | None) -> None:
        self.jobs = {} if existing is None else {existing["metadata"]["name"]: existing}
        self.calls: list[str] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        from kubernetes.client.exceptions import ApiException

        self.calls.append("create")
        if body["metadata"]["name"] in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[body["metadata"]["name"]] = {
            **body,
            "status": {"conditions": [{"type": "Succeeded", "status": "True"}]},
        }

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.exceptions import ApiException

        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        return self.jobs[name]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("delete")
        self.jobs.pop(name, None)


@pytest.mark.parametrize(
    ("previous", "calls"), [("Running", ["create"]), ("Failed", ["create", "delete", "create"])]
)
def test_a_retried_task_adopts_or_replaces_the_job_of_its_previous_attempt(
    monkeypatch: pytest.MonkeyPatch, previous: str, calls: list[str]
) -> None:
    from kubernetes import client, config

    cfg = KfpConfig.model_validate({"distributed": {"nodes": 2}})
    manifest = pytorchjob.pytorchjob_manifest(
        name="reidflow-run-pretrain-osnet", namespace="team-a", image="r.io/reid:1",
        cli_args=["pretrain", "--params", pytorchjob.PARAMS_PATH], params_yaml="", nodes=2, cfg=cfg,
    )  # fmt: skip
    existing = json.loads(json.dumps(manifest))
    existing["status"] = {"conditions": [{"type": previous, "status": "True"}]}
    if previous == "Running":  # it finishes while the new attempt waits
        existing["status"]["conditions"].append({"type": "Succeeded", "status": "True"})
    api = FakeApi(existing)
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda: api)
    pytorchjob.apply_and_wait(manifest, timeout_seconds=60, poll_seconds=0)
    assert api.calls == calls


def test_a_failed_job_fails_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client, config

    cfg = KfpConfig.model_validate({"distributed": {"nodes": 2}})
    manifest = pytorchjob.pytorchjob_manifest(
        name="j", namespace="n", image="r.io/reid:1",
        cli_args=["pretrain", "--params", pytorchjob.PARAMS_PATH], params_yaml="", nodes=2, cfg=cfg,
    )  # fmt: skip
    api = FakeApi(None)
    api.create_namespaced_custom_object = lambda *a: api.jobs.update(  # type: ignore[method-assign]
        {"j": {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}}
    )
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda: api)
    with pytest.raises(ReidflowError, match="failed: kubectl -n n describe pytorchjobs j"):
        pytorchjob.apply_and_wait(manifest, timeout_seconds=60, poll_seconds=0)


def test_the_job_is_owned_by_the_task_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFP_POD_NAME", raising=False)
    assert pytorchjob.owner_reference() is None
    monkeypatch.setenv("KFP_POD_NAME", "reidflow-abc-system-container-impl-1")
    monkeypatch.setenv("KFP_POD_UID", "0b7c-11")
    assert pytorchjob.owner_reference() == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "reidflow-abc-system-container-impl-1",
        "uid": "0b7c-11",
        "blockOwnerDeletion": False,
    }


# ---- submitting to a multi-user Kubeflow ----


def test_auth_maps_onto_the_kfp_client_options(tmp_path: Path) -> None:
    assert Auth().client_kwargs() == {}
    assert Auth(token="t0k").client_kwargs() == {"existing_token": "t0k"}
    assert Auth(cookies="authservice_session=abc").client_kwargs() == {"cookies": "authservice_session=abc"}
    token = tmp_path / "token"
    token.write_text("sa-token")
    kwargs = Auth(sa_token_path=str(token), ssl_ca_cert="/ca.pem").client_kwargs()
    assert type(kwargs["credentials"]).__name__ == "ServiceAccountTokenVolumeCredentials"
    assert kwargs["ssl_ca_cert"] == "/ca.pem"
    with pytest.raises(ConfigError, match="choose one"):
        Auth(token="a", cookies="b").client_kwargs()
    with pytest.raises(ConfigError, match="no such token file"):
        Auth(sa_token_path=str(tmp_path / "missing")).client_kwargs()


def test_the_backend_version_is_checked_when_known() -> None:
    assert parse_version("v2.4.1-rc.1") == (2, 4, 1) and parse_version("unknown") is None
    assert "2.15.0" in check_backend_version("2.15.0")
    assert "did not report its version" in check_backend_version(None)
    with pytest.raises(ConfigError, match="needs >= 2.14.0.*dsl.Collected"):
        check_backend_version("2.4.0")


def test_cli_submit_reads_credentials_from_env_and_checks_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kfp
    from pipelines.cli import pipeline_app
    from typer.testing import CliRunner

    made: dict[str, Any] = {}

    class FakeClient:
        def __init__(self, **kwargs: Any) -> None:
            made.update(kwargs)

        def create_run_from_pipeline_package(self, path: str, **kwargs: Any) -> Any:
            made["arguments"] = kwargs["arguments"]
            return type("Run", (), {"run_id": "run-7"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    (tmp_path / "p.yaml").write_text("x: 1\n")
    monkeypatch.setenv("KF_TOKEN", "secret-token")
    args = ["submit", "--host", "https://kf.example.com/pipeline", "--package", str(tmp_path / "p.yaml")]
    result = CliRunner().invoke(
        pipeline_app, [*args, "--namespace", "team-a", "--token-env", "KF_TOKEN", "--arg", "backbones=[a]"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("run-7")
    assert made["existing_token"] == "secret-token" and made["namespace"] == "team-a"
    assert made["arguments"] == {"backbones": ["a"]}
    assert "secret-token" not in result.output
    result = CliRunner().invoke(pipeline_app, [*args, "--token-env", "NOT_SET_ANYWHERE"])
    assert isinstance(result.exception, ConfigError) and "NOT_SET_ANYWHERE" in str(result.exception)


class GroupsGateway(BaseHTTPRequestHandler):
    """A Pushgateway holding two reidflow groups (one stale) and one of another job."""

    deleted: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        def group(labels: dict[str, str], pushed: float) -> dict[str, Any]:
            return {"labels": labels, "push_time_seconds": {"time_series": [{"value": str(pushed)}]}}

        body = {
            "status": "success",
            "data": [
                group(
                    {"job": "reidflow", "stage": "pretrain", "instance": "kfp-pretrain", "run_id": "old"},
                    1000,
                ),
                group(
                    {"job": "reidflow", "stage": "pretrain", "instance": "kfp-pretrain", "run_id": "new"},
                    9000,
                ),
                group({"job": "other", "instance": "x"}, 10),
            ],
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_DELETE(self) -> None:
        GroupsGateway.deleted.append(self.path)
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_stale_run_groups_are_pruned_from_the_pushgateway() -> None:
    from pipelines.metrics_gc import prune

    GroupsGateway.deleted = []
    server = HTTPServer(("127.0.0.1", 0), GroupsGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        listed = prune(url, older_than_s=3600, dry_run=True, now=10_000)
        assert [g.labels["run_id"] for g in listed] == ["old"] and GroupsGateway.deleted == []
        prune(url, older_than_s=3600, now=10_000)
    finally:
        server.shutdown()
    [path] = GroupsGateway.deleted
    parts = path.removeprefix("/metrics/").split("/")
    assert dict(zip(parts[::2], parts[1::2], strict=True)) == {
        "job": "reidflow",
        "stage": "pretrain",
        "instance": "kfp-pretrain",
        "run_id": "old",
    }
