"""Target BN statistics recomputed on clean target images: exact averages, only the target layers,
weights and modes untouched (reidflow.train.bn_refresh)."""

from __future__ import annotations

import torch
from torch import nn

from reidflow.models.norms import convert_to_dsbn
from reidflow.train.bn_refresh import recompute_target_bn, target_batchnorms


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5)
    )


def test_statistics_become_the_exact_average_over_the_batches() -> None:
    net = small_net()
    batches = [torch.randn(6, 3, 8, 8) + 3.0 for _ in range(3)] + [torch.randn(1, 3, 8, 8)]
    net(batches[0])  # materialize the lazy layer
    net.eval()
    weights = {
        k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    seen = recompute_target_bn(net, batches, torch.device("cpu"))
    assert seen == 18 and not net.training
    full = batches[:3]  # the single-image batch is skipped
    conv_out = torch.cat([net[0](b) for b in full])
    expected_mean = conv_out.mean(dim=(0, 2, 3))
    per_batch = torch.stack([net[0](b).mean(dim=(0, 2, 3)) for b in full]).mean(0)
    assert torch.allclose(net[1].running_mean, per_batch, atol=1e-5)  # equal batches: mean of means
    assert torch.allclose(net[1].running_mean, expected_mean, atol=1e-5)
    assert net[1].momentum == 0.1  # restored
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_only_the_target_branch_of_dsbn_changes() -> None:
    net = small_net()
    net(torch.randn(4, 3, 8, 8))
    convert_to_dsbn(net)
    source_before = {k: v.clone() for k, v in net.state_dict().items() if ".source." in k}
    layers = target_batchnorms(net)
    assert len(layers) == 2 and all(layer is m.target for layer, m in zip(layers, (net[1], net[5])))
    recompute_target_bn(net, [torch.randn(4, 3, 8, 8) - 2.0], torch.device("cpu"))
    for k, v in source_before.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert net[1].target.running_mean.mean() < -0.1 or net[1].target.running_mean.abs().sum() > 0
