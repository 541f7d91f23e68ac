"""`reidflow sda train` + `sda translate` end to end on tiny synthetic data (32x16 translation): the
generator artifact, translated shards that keep every key and label, lineage to the generator and the
source shards, exact resume, and one-line errors naming the bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reidflow.data.index import ShardIndex
from tests.helpers import reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration
ENV = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
SOURCES = ["--input", "source=artifacts/shards/mall_warm", "--input", "source=artifacts/shards/night_station"]
TARGET = ["--input", "target=artifacts/shards/target_city"]
ENCODERS = ["--input", "source_model=artifacts/models/enc", "--input", "target_model=artifacts/models/enc"]
TINY_SDA = {
    "seed": 0,
    "transforms": {"height": 32, "width": 16, "flip_p": 0.5, "pad": 2, "erasing_p": 0.0},
    "generator": {"ngf": 4, "n_blocks": 1, "n_down": 2},
    "discriminator": {"ndf": 4, "n_layers": 2},
    "sampler": {"P": 3, "K": 2},
    "target_batch_size": 4,
    "loss": {"relation_weight": 1.0, "pool_size": 4},
    "schedule": {"constant_epochs": 1, "decay_epochs": 1},
    "engine": {"epochs": 2, "iters_per_epoch": 2, "device": "cpu", "checkpoint_every": 2, "log_every": 1},
    "num_workers": 0,
    "samples": 3,
    "translate": {"batch_size": 16},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sda")
    params = tiny_params()
    params["sda"] = TINY_SDA
    write_params(root / "params.yaml", params)
    reidflow("synth", "--output", "data/synth", cwd=root, env=ENV)
    for name in ("mall_warm", "night_station", "target_city"):
        reidflow("shard", "-d", name, "--output", f"artifacts/shards/{name}", cwd=root, env=ENV)
    # one tiny pretrain model (BN adapted to the target) serves as both frozen encoders
    reidflow(
        "pretrain", "--output", "artifacts/models/enc", *SOURCES, *TARGET, "--set", "pretrain.eval.enabled=false",
        cwd=root, env=ENV,
    )  # fmt: skip
    reidflow("sda", "train", "--output", "artifacts/sda/gen", *SOURCES, *TARGET, *ENCODERS, cwd=root, env=ENV)
    return root


def test_train_writes_the_generator_artifact(project):
    out = project / "artifacts/sda/gen"
    for name in ("g_st", "g_ts", "d_s", "d_t"):
        assert load_file(str(out / f"{name}.safetensors")), name
    meta = json.loads((out / "generator.json").read_text())
    assert meta["input"] == {"height": 32, "width": 16} and meta["generator"]["ngf"] == 4
    assert meta["target_domains"] == ["target_city"]
    for name in ("training_curve.json", "training_curve.png", "samples.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["iterations"] == 4
    assert {"g_gan", "cycle", "identity", "relation", "d_s", "d_t"} <= set(metrics["train"]["final"])
    lineage = json.loads((out / "lineage.json").read_text())
    assert [i["name"] for i in lineage["inputs"]] == [
        "source0",
        "source1",
        "target",
        "source_model",
        "target_model",
    ]
    reidflow("lineage", "verify", "artifacts/sda/gen", cwd=project, env=ENV)
    assert not (project / "artifacts/sda/gen.ckpt").exists()


def test_translate_keeps_every_key_and_label(project):
    reidflow(
        "sda", "translate", "--output", "artifacts/sda/translated", "--input", "generator=artifacts/sda/gen",
        *SOURCES, cwd=project, env=ENV,
    )  # fmt: skip
    out = project / "artifacts/sda/translated"
    for name in ("mall_warm", "night_station"):
        raw = ShardIndex.load(project / "artifacts/shards" / name / name)
        new = ShardIndex.load(out / name)
        before = dict(
            zip(
                raw.keys,
                zip(raw.pids.tolist(), raw.camids.tolist(), raw.splits.tolist(), raw.domains.tolist()),
            )
        )
        after = dict(
            zip(
                new.keys,
                zip(new.pids.tolist(), new.camids.tolist(), new.splits.tolist(), new.domains.tolist()),
            )
        )
        assert before == after
        assert set(new.widths.tolist()) == {16} and set(new.heights.tolist()) == {32}
        assert set(new.sha256).isdisjoint(raw.sha256), "every image was translated"
        card = json.loads((out / name / "dataset_card.json").read_text())
        assert card["images"] == len(raw) and card["colour"]["by_domain"][name]["images"] == len(raw)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["artifact"]["kind"] == "shards"
    assert [i["name"] for i in lineage["inputs"]] == ["generator", "source0", "source1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == sum(len(ShardIndex.load(out / n)) for n in ("mall_warm", "night_station"))
    reidflow("lineage", "verify", "artifacts/sda/translated", cwd=project, env=ENV)
    # the translated shards feed pretraining like raw ones
    reidflow(
        "pretrain", "--output", "artifacts/models/on_translated", "--input", "source=artifacts/sda/translated",
        "--set", "pretrain.eval.enabled=false", "--set", "pretrain.target_bn.enabled=false", cwd=project, env=ENV,
    )  # fmt: skip


def test_resume_is_exact(project):
    """Stopped after 2 iterations and resumed to 4: the same generator bytes as the uninterrupted run."""
    common = [*SOURCES, *TARGET, *ENCODERS, "--set", "sda.keep_checkpoints=true"]
    reidflow("sda", "train", "--output", "artifacts/sda/cut", *common, "--set", "sda.engine.max_iters=2",
             cwd=project, env=ENV)  # fmt: skip
    reidflow("sda", "train", "--output", "artifacts/sda/cut", *common, "--resume", cwd=project, env=ENV)
    for name in ("g_st", "g_ts", "d_s", "d_t"):
        full = load_file(str(project / "artifacts/sda/gen" / f"{name}.safetensors"))
        resumed = load_file(str(project / "artifacts/sda/cut" / f"{name}.safetensors"))
        assert full.keys() == resumed.keys()
        assert all(bool((full[k] == resumed[k]).all()) for k in full), name


def test_plain_cyclegan_needs_no_encoders(project):
    reidflow(
        "sda", "train", "--output", "artifacts/sda/cyclegan", *SOURCES, *TARGET, "--set", "sda.loss.relation_weight=0",
        "--set", "sda.engine.max_iters=1", cwd=project, env=ENV,
    )  # fmt: skip
    lineage = json.loads((project / "artifacts/sda/cyclegan/lineage.json").read_text())
    assert [i["name"] for i in lineage["inputs"]] == ["source0", "source1", "target"]


def _error(project: Path, *args: str) -> str:
    proc = reidflow(*args, cwd=project, env=ENV, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_inputs_give_one_line_errors(project, tmp_path):
    line = _error(
        project, "sda", "train", "--output", str(tmp_path / "a"), *SOURCES, *TARGET,
        "--input", "source_model=artifacts/shards/mall_warm", "--input", "target_model=artifacts/models/enc",
    )  # fmt: skip
    assert "input 'source_model'" in line and "not a re-ID model artifact" in line
    line = _error(
        project, "sda", "translate", "--output", str(tmp_path / "b"), "--input", "generator=artifacts/sda/gen",
        *SOURCES, "--set", "sda.transforms.height=64", "--set", "sda.transforms.width=32",
    )  # fmt: skip
    assert "input 'generator'" in line and "32x16" in line
    line = _error(
        project, "sda", "translate", "--output", str(tmp_path / "c"), "--input", "generator=artifacts/models/enc",
        *SOURCES,
    )  # fmt: skip
    assert "input 'generator'" in line and "not an SDA generator artifact" in line
    _empty_target(project)
    line = _error(
        project, "sda", "train", "--output", str(tmp_path / "d"), *SOURCES, "--input", "target=artifacts/shards/empty",
        *ENCODERS,
    )  # fmt: skip
    assert "input 'target'" in line and "no train-split images" in line


def _empty_target(project: Path) -> None:
    """A shard artifact of the target's query/gallery images only (no train split to learn a style from)."""
    from reidflow.data.readers import read_dataset
    from reidflow.data.shards import write_shards
    from reidflow.store.artifacts import write_artifact

    raw = project / "data/synth/target_city"
    samples = [s for s in read_dataset("market1501", raw, domain="target_city") if s.split != "train"]
    with write_artifact(
        project / "artifacts/shards/empty", kind="shards", stage="shard", params={}, params_digest="sha256:0",
        seed=None, inputs=[],
    ) as art:  # fmt: skip
        write_shards(samples, art.path, dataset="target_city", root=raw)
