"""The norm factory, the built-in norm kinds and convert_norms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.norms import (
    BatchInstanceNorm2d,
    InstanceBatchNorm2d,
    InstanceNorm2d,
    clamp_gates_,
    convert_norms,
    list_norms,
    make_norm,
    register_norm,
)


def _manual_norm(x: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 6, 5, 3) * 3 + 1


def test_builtin_kinds_are_registered():
    assert {"bn", "in", "ibn", "bin"} <= set(list_norms())


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ConfigError) as info:
        make_norm("groupnorm", 8)
    message = str(info.value)
    assert "groupnorm" in message and "bn" in message and "ibn" in message and "bin" in message


def test_register_norm_plugs_in_and_refuses_duplicates():
    register_norm("test_identity_norm", lambda c: nn.Identity(), overwrite=True)
    assert isinstance(make_norm("test_identity_norm", 4), nn.Identity)
    with pytest.raises(ConfigError, match="already registered"):
        register_norm("test_identity_norm", lambda c: nn.Identity())


def test_bn_is_plain_batchnorm():
    layer = make_norm("bn", 6)
    assert type(layer) is nn.BatchNorm2d and layer.num_features == 6


def test_in_uses_instance_statistics_in_train_and_eval(x):
    layer = make_norm("in", 6)
    assert isinstance(layer, InstanceNorm2d)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(0.5)
    expected = _manual_norm(x, (2, 3)) * 2.0 + 0.5
    torch.testing.assert_close(layer.train()(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.eval()(x), expected, atol=1e-5, rtol=1e-5)
    assert not list(layer.buffers())  # nothing running


def test_ibn_splits_half_in_half_bn(x):
    layer = make_norm("ibn", 6).train()
    assert isinstance(layer, InstanceBatchNorm2d) and layer.in_channels == 3
    out = layer(x)
    torch.testing.assert_close(out[:, :3], _manual_norm(x[:, :3], (2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 3:], _manual_norm(x[:, 3:], (0, 2, 3)), atol=1e-5, rtol=1e-5)
    # only the BN half keeps running statistics
    assert layer.bn.running_mean.shape == (3,)


def test_bin_formula_with_shared_affine(x):
    layer = make_norm("bin", 6).train()
    assert isinstance(layer, BatchInstanceNorm2d)
    rho = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.9])
    gamma, beta = torch.linspace(0.5, 2.0, 6), torch.linspace(-1.0, 1.0, 6)
    with torch.no_grad():
        layer.rho.copy_(rho)
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
    x_b, x_i = _manual_norm(x, (0, 2, 3)), _manual_norm(x, (2, 3))
    view = (1, -1, 1, 1)
    expected = gamma.view(view) * (rho.view(view) * x_b + (1 - rho.view(view)) * x_i) + beta.view(view)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_bin_gate_is_clamped_in_forward_and_by_clamp_gates(x):
    layer = make_norm("bin", 6).eval()
    with torch.no_grad():
        layer.rho.fill_(1.7)
    pure_bn = F.batch_norm(x, layer.bn.running_mean, layer.bn.running_var, eps=layer.eps)
    torch.testing.assert_close(layer(x), pure_bn)
    clamp_gates_(nn.Sequential(layer))
    assert torch.all(layer.rho == 1.0)


def test_convert_norms_copies_bn_state_and_preserves_eval_output(x):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(6)))
    model.train()
    for _ in range(3):
        model(x)  # non-trivial running stats
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    model.eval()
    before = model(x)
    running_mean = model[1].running_mean.clone()
    convert_norms(model, "bin")
    assert isinstance(model[1], BatchInstanceNorm2d) and isinstance(model[3][0], BatchInstanceNorm2d)
    assert not model[1].training
    torch.testing.assert_close(model[1].bn.running_mean, running_mean)
    torch.testing.assert_close(model(x), before)  # rho = 1 -> pure BN with the copied stats and affine


def test_convert_norms_to_ibn_splits_statistics(x):
    bn = nn.BatchNorm2d(6)
    bn.running_mean.copy_(torch.arange(6.0))
    bn.weight.data.copy_(torch.arange(6.0) + 10)
    model = nn.Sequential(bn)
    convert_norms(model, "ibn")
    ibn = model[0]
    torch.testing.assert_close(ibn.bn.running_mean, torch.tensor([3.0, 4.0, 5.0]))
    torch.testing.assert_close(ibn.bn.weight.data, torch.tensor([13.0, 14.0, 15.0]))
    torch.testing.assert_close(ibn.inorm.weight.data, torch.tensor([10.0, 11.0, 12.0]))


def test_convert_norms_leaves_bnneck_and_composite_branches_alone():
    model = nn.Sequential(make_norm("ibn", 8), nn.BatchNorm1d(8))
    convert_norms(model, "bin")
    assert isinstance(model[0], InstanceBatchNorm2d) and type(model[0].bn) is nn.BatchNorm2d
    assert type(model[1]) is nn.BatchNorm1d


def test_convert_norms_rejects_layers_without_bn_init():
    register_norm("test_opaque_norm", lambda c: nn.GroupNorm(1, c), overwrite=True)
    with pytest.raises(ConfigError, match="load_from_batchnorm"):
        convert_norms(nn.Sequential(nn.BatchNorm2d(4)), "test_opaque_norm")
    with pytest.raises(ConfigError, match="known kinds"):
        convert_norms(nn.Sequential(nn.BatchNorm2d(4)), "nope")


def test_convert_norms_keeps_dtype_and_training_mode():
    model = nn.Sequential(nn.BatchNorm2d(4)).double().train()
    convert_norms(model, "ibn")
    assert model[0].training
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(2, 4, 3, 3, dtype=torch.float64)).dtype == torch.float64
