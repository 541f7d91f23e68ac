"""Optimizer groups/filters and per-iteration LR schedules."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from reidflow.errors import ConfigError
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.gate = nn.Parameter(torch.ones(4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_sgd_bias_groups_get_their_lr_factor_and_weight_decay() -> None:
    net = Net()
    cfg = OptimizerConfig(
        name="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        bias_lr_factor=2.0,
        weight_decay_bias=0.0,
    )
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert group_of(opt, net.body.bias)["lr"] == pytest.approx(0.02)
    assert group_of(opt, net.body.bias)["weight_decay"] == 0.0
    assert group_of(opt, net.body.weight)["lr"] == pytest.approx(0.01)
    assert group_of(opt, net.body.weight)["weight_decay"] == 5e-4
    assert group_of(opt, net.gate)["nesterov"] is True
    used = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net.frozen.weight) not in used  # requires_grad=False is skipped
    assert len(used) == 5


def test_name_filters_select_parameter_groups() -> None:
    net = Net()
    gates = build_optimizer(
        net.named_parameters(), OptimizerConfig(name="sgd", momentum=0, weight_decay=0, include=[r"^gate$"])
    )
    assert [p for g in gates.param_groups for p in g["params"]] == [net.gate]
    rest = build_optimizer(net, OptimizerConfig(exclude=[r"^gate$", r"^head\."]))
    names = {id(p) for g in rest.param_groups for p in g["params"]}
    assert names == {id(net.body.weight), id(net.body.bias)}


def test_adam_and_adamw_keep_betas() -> None:
    net = Net()
    adam = build_optimizer(net, OptimizerConfig(name="adam", lr=3.5e-4, betas=(0.5, 0.999)))
    adamw = build_optimizer(list(net.parameters()), OptimizerConfig(name="adamw", lr=1e-3))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.5, 0.999)
    assert type(adamw) is torch.optim.AdamW


def test_optimizer_bad_input_is_named() -> None:
    net = Net()
    with pytest.raises(ConfigError, match="no trainable parameter.*include=\\['nothing'\\]"):
        build_optimizer(net, OptimizerConfig(include=["nothing"]))
    with pytest.raises(ConfigError, match="unnamed parameters"):
        build_optimizer(net.parameters(), OptimizerConfig(include=["gate"]))
    with pytest.raises(ConfigError, match="item 0 of params is str"):
        build_optimizer(["gate"], OptimizerConfig())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="nesterov"):
        OptimizerConfig(name="adam", nesterov=True)
    with pytest.raises(ValidationError, match="invalid parameter-name pattern"):
        OptimizerConfig(include=["("])
    with pytest.raises(ValidationError):
        OptimizerConfig(lr=0)


def lrs_over(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def sgd(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_multistep_in_epochs_is_per_iteration() -> None:
    cfg = SchedulerConfig(kind="multistep", warmup=2, warmup_start_factor=0.01, milestones=[3, 5], gamma=0.1)
    lrs = lrs_over(build_scheduler(sgd(0.1), cfg, iters_per_epoch=4), 24)
    # warm-up over 8 iterations: linear from 0.001 to 0.1
    for t in range(8):
        assert lrs[t] == pytest.approx(0.1 * (0.01 + (1 - 0.01) * t / 8))
    assert lrs[8:12] == pytest.approx([0.1] * 4)
    assert lrs[12:20] == pytest.approx([0.01] * 8)  # epoch 3 = iteration 12
    assert lrs[20:] == pytest.approx([0.001] * 4)


def test_cosine_in_iterations_reaches_min_lr() -> None:
    cfg = SchedulerConfig(kind="cosine", unit="iter", total=10, min_lr_factor=0.1)
    lrs = lrs_over(build_scheduler(sgd(1.0), cfg, iters_per_epoch=3), 12)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_constant_schedule_with_warmup() -> None:
    lrs = lrs_over(
        build_scheduler(
            sgd(0.5), SchedulerConfig(kind="constant", unit="iter", warmup=2, warmup_start_factor=0.5), 1
        ),
        4,
    )
    assert lrs == pytest.approx([0.25, 0.375, 0.5, 0.5])


def test_scheduler_state_is_json_and_resumes_exactly() -> None:
    cfg = SchedulerConfig(kind="multistep", warmup=1, milestones=[2], gamma=0.5)
    a = build_scheduler(sgd(), cfg, iters_per_epoch=5)
    first = lrs_over(a, 7)
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON, no pickle needed
    rest_a = lrs_over(a, 8)
    b = build_scheduler(sgd(), cfg, iters_per_epoch=5)
    b.load_state_dict(state)
    b.optimizer.param_groups[0]["lr"] = state["_last_lr"][0]
    assert lrs_over(b, 8) == rest_a
    assert first[0] == pytest.approx(0.001)


def test_scheduler_bad_input() -> None:
    with pytest.raises(ValidationError, match="cosine.*total"):
        SchedulerConfig(kind="cosine")
    with pytest.raises(ValidationError, match="increasing"):
        SchedulerConfig(milestones=[40, 10])
    with pytest.raises(ConfigError, match="iters_per_epoch must be >= 1"):
        build_scheduler(sgd(), SchedulerConfig(), iters_per_epoch=0)
