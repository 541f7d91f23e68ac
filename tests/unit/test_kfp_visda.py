"""The VisDA pipeline (pipelines/visda_pipeline.py) compiled from pipelines/visda/params.yaml: the
backend rules of tests/kfp_rules.py, the backbone loop, GPUs on every training task, the report's
fan-in, and the per-task overrides that name the models as the DVC chain does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipelines.reid_pipeline import TASK_SECTIONS
from pipelines.runner import load_plan

from reidflow.errors import ConfigError
from tests import kfp_rules as rules
from tests.kfp_rules import DIGEST, compile_spec
from tests.unit.test_kfp_conformance import PARAMS_KEY

REPO = Path(__file__).resolve().parents[2]
VISDA_PARAMS = REPO / "pipelines" / "visda" / "params.yaml"
# the conformance rules' cluster: a pinned image, 2 GPUs per training pod, a GPU node pool
CLUSTER = (
    f"kfp.image=registry.example.com/reidflow@{DIGEST}",
    "kfp.gpus=2",
    "kfp.node_selector={cloud.google.com/gke-accelerator: nvidia-l4}",
)
TRAINING_COMPONENTS = {"pretrain", "sda-train", "sda-translate", "mmt", "camera"}
VISDA_PARAMS_KEY = {**PARAMS_KEY, "visda-report": "visda"}
LOOPED = {
    "visda-overrides",
    "pretrain-raw-seed0",
    "pretrain-raw-seed1",
    "pretrain-sda-seed0",
    "pretrain-sda-seed1",
    "mmt",
    "mmt-plus",
}


def visda_section() -> dict[str, Any]:
    return yaml.safe_load(VISDA_PARAMS.read_text())["visda"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    import os

    os.environ.pop("REIDFLOW_IMAGE", None)
    return compile_spec(
        tmp_path_factory.mktemp("visda"), VISDA_PARAMS, "visda", pipeline="visda", overrides=CLUSTER
    )


def tasks_by_name(spec: dict) -> dict[str, tuple[str, str, dict, dict]]:
    """Every leaf task by its name (display name): (dag, key, task spec, resolved inputs)."""
    return {
        task["taskInfo"]["name"]: (dag, key, task, inputs)
        for dag, key, task, inputs in rules.leaf_tasks(spec)
    }


# ---- the backend rules ----


def test_placeholders_only_as_task_arguments_and_no_per_run_inputs(compiled: tuple[dict, dict]) -> None:
    spec, platform = compiled
    # collect-shards and the overrides tasks write no reidflow artifact
    rules.check_placeholders(spec, unnamed={"collect-shards", "visda-overrides"})
    rules.check_no_per_run_inputs(spec, platform)


def test_task_names_are_unique_and_the_loop_holds_each_backbones_chain(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    assert rules.looped_task_names(spec) == {"shard", *LOOPED}


def test_every_consumed_artifact_is_produced_upstream(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    assert rules.check_consumed_artifacts(spec) >= 20


def test_secrets_resources_and_placement(compiled: tuple[dict, dict]) -> None:
    spec, platform = compiled
    rules.check_secret_keys(spec, platform)
    trained = rules.check_training_resources(spec, platform, training=TRAINING_COMPONENTS, gpus="2")
    assert trained == TRAINING_COMPONENTS


def test_each_task_receives_only_the_sections_it_reads(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    checked = rules.check_task_sections(spec, VISDA_PARAMS_KEY, TASK_SECTIONS)
    assert checked == {
        "synth",
        "shard",
        "pretrain",
        "sda-train",
        "sda-translate",
        "mmt",
        "camera",
        "visda-report",
    }
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert json.loads(inputs["visda_params"]["defaultValue"]) == {"visda": visda_section()}


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        (("visda", "report", "max_rank"), {"visda-report"}),
        (("pretrain", "engine", "epochs"), {"pretrain"}),  # the SDA encoder and every loop pretrain
        (("mmt", "iters_per_epoch"), {"mmt"}),  # MMT and MMT+
        (("sda", "samples"), {"sda-train", "sda-translate"}),
        (("camera", "engine", "epochs"), {"camera"}),
        (("kfp", "node_selector", "pool"), set()),  # cluster settings are not inputs
    ],
)
def test_an_edit_changes_only_the_inputs_of_the_tasks_that_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: tuple[str, ...], changed: set[str]
) -> None:
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    params = yaml.safe_load(VISDA_PARAMS.read_text())
    params["kfp"] = {"node_selector": {"pool": "gpu"}}
    before, _ = compile_spec(tmp_path, params, "before", pipeline="visda")
    after, _ = compile_spec(tmp_path, rules.edited(params, edit), "after", pipeline="visda")
    assert rules.changed_components(before, after) == changed, edit


# ---- the chain ----


def test_the_backbone_loop_iterates_visda_backbones(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    backbones = visda_section()["backbones"]
    assert spec["root"]["inputDefinitions"]["parameters"]["backbones"]["defaultValue"] == backbones
    [loop] = [t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"] == "backbones"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--backbones"
    assert loop["dependentTasks"] == sorted(["collect-shards", "sda-translate"])  # after SDA, once
    in_loop = {name: inputs for name, (dag, _, _, inputs) in tasks_by_name(spec).items() if dag != "root"}
    for name in LOOPED:
        assert in_loop[name]["backbone"] == ("loop-item", ("param", "backbones", backbones)), name


def test_every_training_task_requests_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the params file as it is (no ``kfp:`` section): one GPU per training pod."""
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    spec, _ = compile_spec(tmp_path, VISDA_PARAMS, pipeline="visda")
    executors = spec["deploymentSpec"]["executors"]
    gpu_tasks = set()
    for name, (_, _, task, _) in tasks_by_name(spec).items():
        res = executors[rules.executor_name(spec, task)]["container"]["resources"]
        if rules.base_name(task) in TRAINING_COMPONENTS:
            accelerator = res["accelerator"]
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1"), (
                name
            )
            gpu_tasks.add(name)
        else:
            assert "accelerator" not in res, name
    assert gpu_tasks == {"sda-encoder", "sda-train", "sda-translate", "camera"} | (
        LOOPED - {"visda-overrides"}
    )


def test_the_report_consumes_every_role_and_the_camera_model(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    report = root["visda-report"]["inputs"]
    loop_key = next(k for k, t in root.items() if t["taskInfo"]["name"] == "backbones")
    loop = spec["components"][root[loop_key]["componentRef"]["name"]]["dag"]
    seeds = visda_section()["seeds"]
    roles = {
        "raw1": f"pretrain-raw-seed{seeds[0]}",
        "raw2": f"pretrain-raw-seed{seeds[1]}",
        "sda1": f"pretrain-sda-seed{seeds[0]}",
        "sda2": f"pretrain-sda-seed{seeds[1]}",
        "mmt": "mmt",
        "mmt_plus": "mmt-plus",
    }
    for role, producer in roles.items():
        # the models (dsl.Collected over the loop) and their content digests (cache keys)
        model = report["artifacts"][role]["taskOutputArtifact"]
        [pick] = loop["outputs"]["artifacts"][model["outputArtifactKey"]]["artifactSelectors"]
        digest = report["parameters"][f"{role}_digests"]["taskOutputParameter"]
        value = loop["outputs"]["parameters"][digest["outputParameterKey"]]["valueFromParameter"]
        assert model["producerTask"] == digest["producerTask"] == loop_key, role
        assert (pick["outputArtifactKey"], value["outputParameterKey"]) == ("model", "digest"), role
        for subtask in (pick["producerSubtask"], value["producerSubtask"]):
            assert loop["tasks"][subtask]["taskInfo"]["name"] == producer, role
    assert report["artifacts"]["camera"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "camera",
    }
    assert report["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"] == "collect-shards"
    assert report["parameters"]["shards_digest"]["taskOutputParameter"]["producerTask"] == "collect-shards"
    # MMT and MMT+ adapt the two nets pretrained on the translations, on the original shards
    for name in ("mmt", "mmt-plus"):
        [task] = [t for t in loop["tasks"].values() if t["taskInfo"]["name"] == name]
        models = [
            task["inputs"]["artifacts"][m]["taskOutputArtifact"]["producerTask"] for m in ("model1", "model2")
        ]
        assert [loop["tasks"][m]["taskInfo"]["name"] for m in models] == [roles["sda1"], roles["sda2"]]
        assert (
            task["inputs"]["artifacts"]["shards"]["componentInputArtifact"]
            == "pipelinechannel--collect-shards-manifest"
        )


def test_overrides_name_seed_and_mode_every_task_like_the_dvc_stages(compiled: tuple[dict, dict]) -> None:
    from components.visda_overrides import visda_overrides

    named = visda_overrides(
        backbone="osnet_x0_25",
        seeds=[0.0, 1.0],
        pretrain_overrides=["pretrain.engine.epochs=2"],
        mmt_overrides=[],
    )
    assert named.raw2 == [
        "pretrain.engine.epochs=2",
        "pretrain.seed=1",
        "pretrain.engine.seed=1",
        "pretrain.name=osnet_x0_25-raw-seed1",
    ]
    assert named.sda1[-1] == "pretrain.name=osnet_x0_25-sda-seed0"
    assert named.mmt == ["mmt.method.mode=mmt", "mmt.name=osnet_x0_25-mmt"]
    assert named.mmt_plus == ["mmt.method.mode=mmt+", "mmt.name=osnet_x0_25-mmt-plus"]
    # each training task takes its list from the overrides task of its own backbone
    spec, _ = compiled
    tasks = tasks_by_name(spec)
    keys = {"pretrain-raw-seed0": "raw1", "pretrain-raw-seed1": "raw2", "pretrain-sda-seed0": "sda1",
            "pretrain-sda-seed1": "sda2", "mmt": "mmt", "mmt-plus": "mmt_plus"}  # fmt: skip
    [helper_key] = [key for name, (dag, key, _, _) in tasks.items() if name == "visda-overrides"]
    for name, output in keys.items():
        assert tasks[name][3]["overrides"] == ("task", helper_key, output), name
    # the SDA encoder is the raw first-seed net of visda.sda_encoder, named like it
    _, encoder_helper, _, helper_inputs = tasks["sda-encoder-overrides"]
    assert helper_inputs["backbone"] == ("const", visda_section()["sda_encoder"])
    assert tasks["sda-encoder"][3]["overrides"] == ("task", encoder_helper, "raw1")
    assert tasks["sda-encoder"][3]["backbone"] == ("const", visda_section()["sda_encoder"])


def test_mmt_overrides_can_name_the_model() -> None:
    """The mmt component's default name (<backbone>-mmt) comes before the overrides."""
    import inspect

    from components import mmt

    assert '[f"mmt.name={backbone}-mmt", *overrides]' in inspect.getsource(mmt.mmt)


def test_the_plan_checks_the_chain_against_the_datasets(tmp_path: Path) -> None:
    params = yaml.safe_load(VISDA_PARAMS.read_text())
    plan = load_plan(VISDA_PARAMS, pipeline="visda")
    assert plan.backbones == params["visda"]["backbones"] and plan.pipeline_name == "reidflow-visda"
    assert plan.datasets == ["personx_like", "target_city"] and plan.camera_model
    params["datasets"]["extra"] = {"reader": "market1501", "root": "data/synth/extra", "role": "source"}
    (tmp_path / "two-sources.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="role 'source'.*visda.source"):
        load_plan(tmp_path / "two-sources.yaml", pipeline="visda")
    # kfp.datasets picks the chain's two datasets again
    assert load_plan(tmp_path / "two-sources.yaml", ["kfp.datasets=[personx_like, target_city]"], "visda")
    with pytest.raises(ConfigError, match="visda.backbones"):
        load_plan(VISDA_PARAMS, ["kfp.backbones=[osnet_x0_25]"], "visda")
    with pytest.raises(ConfigError, match="--pipeline"):
        load_plan(VISDA_PARAMS, pipeline="nope")


def test_cli_compiles_the_visda_pipeline_from_its_own_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs/kubernetes.md command, and its default --params."""
    from pipelines.cli import pipeline_app
    from typer.testing import CliRunner

    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    monkeypatch.chdir(REPO)
    runner = CliRunner()
    explicit, default = tmp_path / "visda_pipeline.yaml", tmp_path / "default.yaml"
    args = ["compile", "--pipeline", "visda"]
    result = runner.invoke(
        pipeline_app, [*args, "--params", "pipelines/visda/params.yaml", "-o", str(explicit)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(pipeline_app, [*args, "-o", str(default)])
    assert result.exit_code == 0, result.output
    assert explicit.read_text() == default.read_text()
    spec = next(yaml.safe_load_all(explicit.read_text()))
    assert spec["pipelineInfo"]["name"] == "reidflow-visda"
    assert "exec-visda-report" in spec["deploymentSpec"]["executors"]
    result = runner.invoke(pipeline_app, [*args, "-o", str(default), "--set", "kfp.gpus=4"])
    assert result.exit_code == 0, result.output
    spec = next(yaml.safe_load_all(default.read_text()))
    assert (
        spec["deploymentSpec"]["executors"]["exec-mmt"]["container"]["resources"]["accelerator"][
            "resourceCount"
        ]
        == "4"
    )
    result = runner.invoke(pipeline_app, ["compile", "--pipeline", "nope", "-o", str(default)])
    assert isinstance(result.exception, ConfigError) and "--pipeline" in str(result.exception)
    result = runner.invoke(pipeline_app, ["run", "--pipeline", "visda"])
    assert isinstance(result.exception, ConfigError) and "--local" in str(result.exception)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # submit's default package is <pipeline>_pipeline.yaml: not here
    result = runner.invoke(pipeline_app, ["submit", "--pipeline", "visda", "--host", "http://kfp.invalid"])
    assert isinstance(result.exception, ConfigError) and "visda_pipeline.yaml" in str(result.exception)


def test_the_gpu_params_compile_with_the_reference_backbones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipelines/visda/params-gpu.yaml (256x128, the four reference families, real VisDA-2020 data)."""
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    spec, _ = compile_spec(
        tmp_path, REPO / "pipelines" / "visda" / "params-gpu.yaml", "visda-gpu", pipeline="visda",
        overrides=(f"kfp.image=registry.example.com/reidflow@{DIGEST}",),
    )  # fmt: skip
    backbones = yaml.safe_load((REPO / "pipelines/visda/params-gpu.yaml").read_text())["visda"]["backbones"]
    assert spec["root"]["inputDefinitions"]["parameters"]["backbones"]["defaultValue"] == backbones
    assert backbones == ["resnest50", "densenet169_ibn_a", "resnext101_ibn_a", "resnest101"]
