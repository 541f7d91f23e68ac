"""MetaBIN's norm layer: the BN/IN mixture, running-statistic modes, gates, BN conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from reidflow.errors import ConfigError
from reidflow.models.norms import (
    MetaBatchInstanceNorm2d,
    clamp_gates_,
    convert_norms,
    gate_parameters,
    make_norm,
    running_stats_held,
)


def layer(rho: float = 1.0) -> MetaBatchInstanceNorm2d:
    torch.manual_seed(0)
    m = make_norm("metabin", 4, rho_init=rho)
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
        m.in_weight.uniform_(0.5, 1.5)
        m.in_bias.uniform_(-0.5, 0.5)
    return m


def test_gate_one_is_bn_and_gate_zero_is_in():
    x = torch.randn(6, 4, 5, 3)
    m = layer(1.0)
    expected_bn = nn.functional.batch_norm(x, None, None, m.bn.weight, m.bn.bias, training=True)
    torch.testing.assert_close(m(x), expected_bn)
    m0 = layer(0.0)
    expected_in = nn.functional.instance_norm(x, weight=m0.in_weight, bias=m0.in_bias)
    torch.testing.assert_close(m0(x), expected_in)
    half = layer(0.5)
    bn_part = nn.functional.batch_norm(x, None, None, half.bn.weight, half.bn.bias, training=True)
    in_part = nn.functional.instance_norm(x, weight=half.in_weight, bias=half.in_bias)
    torch.testing.assert_close(half(x), 0.5 * bn_part + 0.5 * in_part)


def test_running_statistics_update_hold_and_eval():
    m = layer(0.7)
    x = torch.randn(8, 4, 5, 3) * 3 + 2
    m(x)
    after_update = m.bn.running_mean.clone()
    assert not torch.allclose(after_update, torch.zeros(4)), "the base step updates running statistics"
    model = nn.Sequential(m, nn.Flatten(), nn.BatchNorm1d(60))
    neck_mean, neck_count = model[2].running_mean.clone(), model[2].num_batches_tracked.clone()
    with running_stats_held(model):
        model(torch.randn(8, 4, 5, 3) * 5 - 1)
    torch.testing.assert_close(m.bn.running_mean, after_update)
    torch.testing.assert_close(model[2].running_mean, neck_mean)
    assert (
        model[2].num_batches_tracked == neck_count and model[2].momentum == 0.1 and not m.hold_running_stats
    )
    m.eval()
    y = torch.randn(2, 4, 5, 3)
    bn_eval = nn.functional.batch_norm(
        y, m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias, training=False
    )
    in_part = nn.functional.instance_norm(y, weight=m.in_weight, bias=m.in_bias)
    torch.testing.assert_close(m(y), 0.7 * bn_eval + 0.3 * in_part)


def test_gates_are_found_clamped_and_replaceable_by_functional_call():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), layer(1.0), nn.ReLU(), nn.Conv2d(4, 4, 1), layer(1.0))
    gates = gate_parameters(model)
    assert set(gates) == {"1.rho", "4.rho"}
    with torch.no_grad():
        model[1].rho.fill_(1.7)
        model[4].rho.fill_(-0.2)
    clamp_gates_(model)
    assert model[1].rho.max() == 1.0 and model[4].rho.min() == 0.0
    x = torch.randn(4, 3, 5, 5)
    virtual = {name: torch.full_like(p, 0.25) for name, p in gates.items()}
    out = functional_call(model, virtual, (x,))
    with torch.no_grad():
        for p in gates.values():
            p.fill_(0.25)
    torch.testing.assert_close(out, model(x))


def test_convert_bn_model_keeps_eval_outputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model(torch.randn(16, 3, 8, 8))  # some running statistics
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    convert_norms(model, "metabin")
    assert isinstance(model[1], MetaBatchInstanceNorm2d) and not model[1].training
    torch.testing.assert_close(model(x), before)


def test_bad_gate_init():
    with pytest.raises(ConfigError, match="rho_init"):
        make_norm("metabin", 4, rho_init=1.5)


@pytest.mark.parametrize("name", ["osnet_x0_25", "mobilenetv2_x0_5"])
def test_backbones_build_every_norm_as_metabin(name):
    from reidflow.models.registry import build_backbone

    backbone = build_backbone(name, norm="metabin")
    norms2d = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    metabin = [m for m in backbone.modules() if isinstance(m, MetaBatchInstanceNorm2d)]
    assert metabin and len(norms2d) == len(metabin), "every 2-d norm is a MetaBIN layer (its BN branch aside)"
    assert backbone(torch.randn(2, 3, 64, 32)).ndim == 4


@pytest.mark.parametrize("mode", ["train", "held", "eval"])
def test_fused_forward_equals_the_two_branch_definition(mode: str):
    """Outputs, input/parameter gradients and running statistics of the fused path match the definition."""
    fused, reference = layer(0.6), layer(0.6)
    with torch.no_grad():
        fused.rho.copy_(torch.tensor([0.0, 0.3, 0.8, 1.0]))
        fused.bn.running_mean.uniform_(-1, 1)
        fused.bn.running_var.uniform_(0.5, 2)
    reference.load_state_dict(fused.state_dict())
    x = (torch.randn(6, 4, 7, 5, dtype=torch.float64) * 2 + 1).requires_grad_()
    fused, reference = fused.double(), reference.double()
    if mode == "eval":
        fused.eval(), reference.eval()
    fused.hold_running_stats = reference.hold_running_stats = mode == "held"
    grads = []
    weights = torch.randn(x.shape, dtype=x.dtype)
    for m, forward in ((fused, fused._fused), (reference, reference._two_branch)):
        out = forward(x)
        g = torch.autograd.grad(
            (out * weights).sum(), [x, m.rho, m.bn.weight, m.bn.bias, m.in_weight, m.in_bias]
        )
        grads.append((out.detach(), g))
    (out_f, g_f), (out_r, g_r) = grads
    torch.testing.assert_close(out_f, out_r)
    for a, b in zip(g_f, g_r, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fused.bn.running_mean, reference.bn.running_mean)
    torch.testing.assert_close(fused.bn.running_var, reference.bn.running_var)
    assert fused.bn.num_batches_tracked == reference.bn.num_batches_tracked == (1 if mode == "train" else 0)


def test_fused_forward_keeps_the_input_dtype_and_rejects_other_ranks():
    m = layer(0.5)
    out = m(torch.randn(4, 4, 3, 3).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="N×C×H×W"):
        m(torch.randn(4, 4, 3))
