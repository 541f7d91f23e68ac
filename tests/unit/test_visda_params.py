"""The VisDA chain's params files validate, section by section, and the chain config rejects bad input."""

from __future__ import annotations

import pytest
import yaml

from reidflow.config import section
from reidflow.errors import ConfigError
from reidflow.stages.mmt import MMTStageConfig
from reidflow.stages.pretrain import PretrainConfig
from reidflow.stages.sda import SDAConfig
from reidflow.stages.shard import DatasetSource, ShardConfig
from reidflow.stages.synth import SynthConfig
from reidflow.stages.visda import VisdaConfig
from reidflow.stages.visda_study import VisdaStudyConfig
from tests.helpers import REPO

SECTIONS = {
    "visda": VisdaConfig,
    "synth": SynthConfig,
    "shard": ShardConfig,
    "pretrain": PretrainConfig,
    "camera": PretrainConfig,
    "sda": SDAConfig,
    "mmt": MMTStageConfig,
}


@pytest.mark.parametrize("name", ["params.yaml", "params-gpu.yaml"])
def test_chain_params_validate(name: str) -> None:
    path = REPO / "pipelines/visda" / name
    raw = yaml.safe_load(path.read_text())
    for key, config in SECTIONS.items():
        section(raw, key, config, source=str(path))
    visda = section(raw, "visda", VisdaConfig, source=str(path))
    assert {visda.source, visda.target} <= set(raw["datasets"])
    for entry in raw["datasets"].values():
        DatasetSource.model_validate(entry)


def test_gpu_params_are_the_reference_sizes() -> None:
    raw = yaml.safe_load((REPO / "pipelines/visda/params-gpu.yaml").read_text())
    assert raw["visda"]["backbones"] == ["resnest50", "densenet169_ibn_a", "resnext101_ibn_a", "resnest101"]
    for key in ("pretrain", "mmt"):
        assert (raw[key]["transforms"]["height"], raw[key]["transforms"]["width"]) == (256, 128)
    assert raw["datasets"]["visda_target"]["reader"] == "visda2020"


def test_study_section_validates() -> None:
    section(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        "visda_study",
        VisdaStudyConfig,
        source="params.yaml",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbones": ["osnet_x0_25", "no_such_net"]}, "not registered backbones"),
        ({"backbones": ["osnet_x0_25", "osnet_x0_25"]}, "twice"),
        ({"seeds": [0]}, "two different seeds"),
        ({"seeds": [1, 1]}, "two different seeds"),
        ({"sda_encoder": "resnet50"}, "sda_encoder"),
        ({"target": "src"}, "also the source"),
    ],
)
def test_chain_config_errors_name_the_key(change: dict, message: str) -> None:
    good = {"backbones": ["osnet_x0_25"], "source": "src", "target": "tgt", "sda_encoder": "osnet_x0_25"}
    with pytest.raises(ConfigError, match=message):
        section({"visda": {**good, **change}}, "visda", VisdaConfig, source="params.yaml")
