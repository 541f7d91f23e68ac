"""The shared training-stage path (stages/training.py): configs, periodic evaluation, rank-0 writing and
checkpoint cleanup, on a tiny method and random tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from reidflow.config import validate_as
from reidflow.data.sampling import IdentityBatchSampler
from reidflow.errors import ConfigError
from reidflow.stages.metabin import MetabinConfig
from reidflow.stages.pretrain import PretrainConfig
from reidflow.stages.sda import SDAConfig
from reidflow.stages.training import (
    Fitted,
    ReIDTrainingConfig,
    TrainingStageConfig,
    fit,
    open_sources,
    periodic_eval_hook,
    scalar_metrics,
)
from reidflow.train.optim import OptimizerConfig, build_optimizer

torch.set_num_threads(1)


class Vectors(Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
        self.pids = np.arange(24) % 6

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "pid": int(self.pids[i])}


class LinearMethod:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 6)
        self.optimizer = build_optimizer(self.model, OptimizerConfig(name="sgd", lr=0.1))

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, Any]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, torch.Tensor]:
        loss = nn.functional.cross_entropy(ctx.module("model")(batch["image"]), batch["pid"])
        ctx.backward_and_step(loss, "model")
        return {"ce": loss.detach()}


def test_every_training_stage_config_shares_the_base_fields():
    shared = set(TrainingStageConfig.model_fields)
    assert {"seed", "name", "transforms", "engine", "num_workers", "combine_all", "checkpoint_dir"} <= shared
    for config in (PretrainConfig, MetabinConfig):
        assert issubclass(config, ReIDTrainingConfig) and {"model", "eval"} <= set(config.model_fields)
    assert issubclass(SDAConfig, TrainingStageConfig) and "model" not in SDAConfig.model_fields
    with pytest.raises(ConfigError, match="metabin.transforms"):
        validate_as(MetabinConfig, {"transforms": {"height": -1}}, "metabin")
    assert PretrainConfig().eval.every_epochs is None


def test_fit_evaluates_periodically_writes_once_and_removes_checkpoints(tmp_path):
    cfg = TrainingStageConfig(
        engine={"epochs": 4, "device": "cpu", "checkpoint_every": 2, "log_every": 1}, num_workers=0
    )
    data = Vectors()
    sampler = IdentityBatchSampler(data.pids, 3, 2, seed=0)  # 2 batches per epoch
    calls: list[int] = []
    written: list[Fitted] = []

    def evaluate() -> dict[str, Any]:
        calls.append(1)
        return {"same_domain_mAP": 0.5 + len(calls), "datasets": {"x": {"mAP": 1.0}}}

    out = fit(
        "toy", cfg, LinearMethod(), data, sampler, tmp_path / "out", write=written.append,
        evaluate=evaluate, eval_every_epochs=2,
    )  # fmt: skip
    assert out == tmp_path / "out"
    assert len(calls) == 2  # after epochs 2 and 4 (the stage evaluates its final model itself)
    [fitted] = written
    assert fitted.result.final_iteration == 8
    assert [r["iteration"] for r in fitted.eval_history] == [4, 8]
    assert fitted.eval_history[0]["metrics"] == {"same_domain_mAP": 1.5}
    assert not (tmp_path / "out.ckpt").exists()


def test_periodic_eval_is_off_unless_both_given():
    assert periodic_eval_hook(None, 5, dict) is None
    assert periodic_eval_hook(2, 5, None) is None
    assert periodic_eval_hook(2, 5, dict).every == 10
    assert scalar_metrics({"a": 1, "b": True, "c": {"d": 1.0}, "e": 0.5}) == {"a": 1.0, "e": 0.5}


def test_open_sources_needs_one_source():
    with pytest.raises(ConfigError, match="mystage: expected at least one --input source=URI"):
        open_sources("mystage", [])
