"""DSBN: registration, initialization from a pretrained BN, routing of [source | target] batches,
running statistics per branch, folding to a plain-BN model, and one-line errors. (1 vs 2 processes:
tests/integration/test_mmt_ddp.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.heads import BNNeck
from reidflow.models.norms import (
    DomainSpecificBatchNorm,
    convert_norms,
    convert_to_dsbn,
    dsbn_route,
    fold_dsbn,
    has_dsbn,
    list_norms,
    make_norm,
)
from reidflow.models.reid_model import ReIDModel
from tests.integration.mmt_ddp_worker import TinyBackbone


def pretrained_bn(channels: int = 3, seed: int = 0) -> nn.BatchNorm2d:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(7)
    return bn


def tiny_model(seed: int = 0) -> ReIDModel:
    torch.manual_seed(seed)
    model = ReIDModel(TinyBackbone(), pool="avg", num_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_registered_and_initialized_from_a_pretrained_bn() -> None:
    assert "dsbn" in list_norms()
    layer = make_norm("dsbn", 3)
    assert isinstance(layer, DomainSpecificBatchNorm)
    bn = pretrained_bn()
    layer.load_from_batchnorm(bn)
    for branch in (layer.source, layer.target):
        for key, value in bn.state_dict().items():
            assert torch.equal(branch.state_dict()[key], value), key
    model = nn.Sequential(nn.Conv2d(3, 3, 1), pretrained_bn())
    convert_norms(model, "dsbn")
    assert isinstance(model[1], DomainSpecificBatchNorm)
    assert torch.equal(model[1].target.running_var, pretrained_bn().running_var)


def test_split_routes_each_half_through_its_branch() -> None:
    layer = DomainSpecificBatchNorm(pretrained_bn()).train()
    with torch.no_grad():
        layer.target.weight.mul_(2.0)
    x = torch.randn(6, 3, 4, 4)
    source_ref = DomainSpecificBatchNorm(pretrained_bn()).source.train()
    target_ref = DomainSpecificBatchNorm(pretrained_bn()).target.train()
    with torch.no_grad():
        target_ref.weight.mul_(2.0)
    y = layer(x)  # default in training: halves
    assert torch.allclose(y[:3], source_ref(x[:3]), atol=1e-6)
    assert torch.allclose(y[3:], target_ref(x[3:]), atol=1e-6)
    # each branch's running statistics saw only its own half
    assert torch.allclose(layer.source.running_mean, source_ref.running_mean)
    assert torch.allclose(layer.target.running_mean, target_ref.running_mean)
    assert not torch.allclose(layer.source.running_mean, layer.target.running_mean)
    with dsbn_route(layer, "split", split_at=2):
        y2 = layer(x)
    assert torch.allclose(y2[:2], DomainSpecificBatchNorm(pretrained_bn()).source.train()(x[:2]), atol=1e-6)
    assert layer.route is None and layer.split_at is None  # restored


def test_eval_and_forced_routes_use_one_branch() -> None:
    layer = DomainSpecificBatchNorm(pretrained_bn())
    with torch.no_grad():
        layer.source.running_mean.fill_(5.0)
    x = torch.randn(5, 3, 2, 2)  # odd: fine outside the split
    layer.eval()
    assert torch.equal(layer(x), layer.target.eval()(x))
    with dsbn_route(layer, "source"):
        assert torch.equal(layer(x), layer.source.eval()(x))
    layer.train()
    with dsbn_route(layer, "target"):
        assert torch.allclose(
            layer(x), nn.functional.batch_norm(x, None, None, layer.target.weight, layer.target.bias, True)
        )


def test_convert_pairs_every_bn_including_the_bnneck_and_folds_back() -> None:
    model = tiny_model()
    keys = set(model.state_dict())
    x = torch.randn(8, 3, 8, 8)
    model.eval()
    before = model(x)
    convert_to_dsbn(model)
    assert has_dsbn(model)
    assert isinstance(model.neck, DomainSpecificBatchNorm) and isinstance(model.neck.target, BNNeck)
    assert not model.neck.target.bias.requires_grad  # the BNNeck's frozen bias stays frozen
    assert sum(isinstance(m, DomainSpecificBatchNorm) for m in model.modules()) == 3
    assert torch.equal(model(x), before)  # eval: target branch = the pretrained BN
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 8, 8))  # training moves the statistics of both branches apart
    model.eval()
    adapted = model(x)
    fold_dsbn(model)
    assert not has_dsbn(model)
    assert set(model.state_dict()) == keys  # a plain-BN model, as evaluation reads it
    assert torch.equal(model(x), adapted)
    assert not torch.equal(adapted, before)


def test_bad_inputs_are_one_line_errors() -> None:
    layer = DomainSpecificBatchNorm(pretrained_bn()).train()
    with pytest.raises(ConfigError, match="needs an even size"):
        layer(torch.randn(5, 3, 2, 2))
    with pytest.raises(ConfigError, match="must leave both domains a sample"), dsbn_route(layer, "split", 4):
        layer(torch.randn(4, 3, 2, 2))
    with pytest.raises(ConfigError, match="route must be one of"), dsbn_route(layer, "both"):
        pass
    with pytest.raises(ConfigError, match="expected a BatchNorm1d/2d"):
        DomainSpecificBatchNorm(nn.Identity())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot pair the gated norm layer"):
        convert_to_dsbn(nn.Sequential(make_norm("metabin", 3)))
    with pytest.raises(ConfigError, match="branch must be 'source' or 'target'"):
        fold_dsbn(tiny_model(), "both")
