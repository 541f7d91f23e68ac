"""MetaBIN fidelity pieces outside the meta step: the fair BIN gate optimizer, one backward that steps
several optimizers, "combine all" training rows, the single-source CE default, gate trajectories."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader

from reidflow.data.index import INDEX_SCHEMA, ShardIndex
from reidflow.models.norms import BatchInstanceNorm2d
from reidflow.stages.metabin import MetabinConfig
from reidflow.train.engine import Engine, EngineConfig
from reidflow.train.gate_log import (
    gate_stage,
    gate_trajectory_metrics,
    save_gate_trajectories,
    trajectory_from_history,
)
from reidflow.train.optim import (
    OptimizerConfig,
    SchedulerConfig,
    build_gate_optimizer,
    build_optimizer,
    build_scheduler,
)
from reidflow.train.pretrain import LossConfig, PretrainMethod
from tests.unit.test_metabin_method import ImagesDataset, PKBatchSampler


def _index(rows: list[tuple[str, int, str]]) -> ShardIndex:
    """An index of (domain, pid, split) rows; the byte columns are placeholders (never read here)."""
    columns = {name: [] for name in INDEX_SCHEMA.names}
    for i, (domain, pid, split) in enumerate(rows):
        values = {
            "key": f"k{i}",
            "shard": "s.tar",
            "offset": i,
            "size": 1,
            "sha256": "0" * 64,
            "pid": pid,
            "camid": i % 2,
            "domain": domain,
            "split": split,
            "width": 8,
            "height": 16,
            "converted_from": None,
            "source": f"f{i}.jpg",
        }
        for name in INDEX_SCHEMA.names:
            columns[name].append(values[name])
    return ShardIndex(pa.table(columns, schema=INDEX_SCHEMA), Path("."))


def test_combine_all_keeps_train_and_queried_test_ids_but_not_distractors() -> None:
    index = _index(
        [
            ("a", 1, "train"),
            ("a", 1, "train"),
            ("a", 5, "query"),
            ("a", 5, "gallery"),
            ("a", 0, "gallery"),  # a Market-style distractor: never queried
            ("b", 5, "gallery"),  # same pid, other domain, never queried there
            ("b", 2, "query"),
            ("b", 2, "gallery"),
        ]
    )
    combined = index.combined_training_rows()
    kept = list(zip(combined.domains.tolist(), combined.pids.tolist(), combined.splits.tolist(), strict=True))
    assert kept == [
        ("a", 1, "train"),
        ("a", 1, "train"),
        ("a", 5, "query"),
        ("a", 5, "gallery"),
        ("b", 2, "query"),
        ("b", 2, "gallery"),
    ]
    _, mapping = combined.global_pids()
    assert sorted(mapping) == ["a_1", "a_5", "b_2"]


class _GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = BatchInstanceNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        f = torch.relu(self.norm(self.conv(x))).mean((2, 3))
        return {"logits": self.fc(f), "features": f}


def test_bin_gates_get_their_own_plain_constant_sgd() -> None:
    torch.manual_seed(0)
    model = _GatedNet()
    cfg = OptimizerConfig(name="adam", lr=0.01, gate_lr_factor=10.0, gate_optimizer="sgd")
    main, gates = build_optimizer(model, cfg), build_gate_optimizer(model, cfg)
    assert gates is not None and isinstance(gates, torch.optim.SGD)
    rho = model.norm.rho
    assert all(rho is not p for g in main.param_groups for p in g["params"])
    assert [p for g in gates.param_groups for p in g["params"]] == [rho]
    assert gates.param_groups[0]["lr"] == 0.1 and gates.param_groups[0]["momentum"] == 0.0
    assert build_gate_optimizer(model, OptimizerConfig(name="adam")) is None  # shared: gates stay in Adam
    shared = build_optimizer(model, OptimizerConfig(name="adam"))
    assert any(rho is p for g in shared.param_groups for p in g["params"])


def test_one_backward_steps_model_and_gates_like_two_separate_optimizers() -> None:
    """PretrainMethod with the gate optimizer: the gates move by exactly -lr·∇ (plain SGD), θ by Adam."""
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 8, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    model = _GatedNet()
    reference = _GatedNet()
    reference.load_state_dict(model.state_dict())
    cfg = OptimizerConfig(name="adam", lr=0.01, weight_decay=0.0, gate_lr_factor=10.0, gate_optimizer="sgd")
    main, gates = build_optimizer(model, cfg), build_gate_optimizer(model, cfg)
    const = SchedulerConfig(kind="constant")
    loss = LossConfig(triplet_weight=0.0)
    method = PretrainMethod(
        model,
        main,
        build_scheduler(main, const, 1),
        loss,
        3,
        nn.Identity(),
        gate_optimizer=gates,
        gate_scheduler=build_scheduler(gates, const, 1),
    )
    loader = DataLoader(ImagesDataset(), batch_sampler=PKBatchSampler())
    engine = Engine(method, loader, EngineConfig(max_iters=1, device="cpu"), default_hooks=False)
    engine.bind()
    engine.ctx.iteration = 1
    method.step({"image": images, "pid": labels}, engine.ctx)
    # the same step by hand
    ref_main = build_optimizer(reference, cfg)
    from reidflow.train.pretrain import SupervisedLoss

    terms, _ = SupervisedLoss(loss, 3)(reference(images, labels), labels)
    sum(terms.values()).backward()
    expected_rho = (reference.norm.rho - 0.1 * reference.norm.rho.grad).detach().clamp(0, 1)
    ref_main.step()
    assert torch.allclose(model.norm.rho, expected_rho)
    assert torch.allclose(model.conv.weight, reference.conv.weight)


def test_single_source_recipe_adds_ce_to_the_meta_losses_by_default() -> None:
    camera = MetabinConfig.model_validate({"meta_batch": {"domains": "camera"}})
    assert camera.meta.ce_weight == 1.0
    explicit = MetabinConfig.model_validate({"meta_batch": {"domains": "camera"}, "meta": {"ce_weight": 0.0}})
    assert explicit.meta.ce_weight == 0.0
    assert MetabinConfig.model_validate({}).meta.ce_weight == 0.0
    defaults = MetabinConfig.model_validate({}).meta
    assert defaults.virtual_clamp == "straight_through" and defaults.warmup_iters == 10


def test_gate_trajectory_metrics_group_by_backbone_stage() -> None:
    assert gate_stage("backbone.conv3.1.conv1.bn.rho") == "conv3"
    assert gate_stage("backbone.conv1.bn.rho") == "conv1"
    assert gate_stage("rho") == "stem"
    model = _GatedNet()
    with torch.no_grad():
        model.norm.rho.copy_(torch.tensor([0.0, 0.5, 1.0, 1.0]))
    metrics = gate_trajectory_metrics(model)
    assert metrics["rho/all/mean"] == 0.625
    series = trajectory_from_history([{"iteration": 0, **metrics}, {"iteration": 5, "loss": 1.0}])
    assert series["all"]["iteration"] == [0.0] and series["all"]["mean"] == [0.625]
    assert gate_trajectory_metrics(nn.Linear(2, 2)) == {}


def test_gate_trajectories_are_saved_as_json_and_png(tmp_path: Path) -> None:
    records = [{"iteration": i, "rho/all/mean": 1 - i / 10, "rho/conv1/mean": 1 - i / 5} for i in (0, 1, 2)]
    assert save_gate_trajectories(records, tmp_path, "gates")
    saved = json.loads((tmp_path / "gate_trajectories.json").read_text())
    assert (
        saved["conv1"]["mean"] == [1.0, 0.8, 0.6] and (tmp_path / "gate_trajectories.png").stat().st_size > 0
    )
    empty = tmp_path / "none"
    empty.mkdir()
    assert not save_gate_trajectories([{"iteration": 0, "ce": 1.0}], empty, "gates")
    assert list(empty.iterdir()) == []


def test_training_curve_keeps_dvc_rows_homogeneous(tmp_path: Path) -> None:
    """MetaBIN's meta losses are absent during warm-up: they go to their own file, so every row of
    training_curve.json (a DVC plot) has the same keys and nothing is lost."""
    from reidflow.stages.trained_model import save_training_curve

    history = [{"iteration": i, "epoch": 0, "ce": 1.0, "lr/theta": 0.1} for i in (1, 2)]
    history += [{"iteration": 3, "epoch": 0, "ce": 0.9, "mtest_triplet": 0.5, "lr/theta": 0.1}]
    save_training_curve(tmp_path, history, ("ce", "mtest_triplet"), "lr/theta")
    rows = json.loads((tmp_path / "training_curve.json").read_text())
    assert [set(r) for r in rows] == [{"iteration", "epoch", "ce", "lr/theta"}] * 3
    partial = json.loads((tmp_path / "training_curve_partial.json").read_text())
    assert partial == [{"iteration": 3, "mtest_triplet": 0.5}]
