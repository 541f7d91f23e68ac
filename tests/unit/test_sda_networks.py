"""SDA's networks and losses on tiny inputs: shapes, init, every loss, the image pool, and the relation
loss's minimum (zero gradient when the translation keeps every relation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reidflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidflow.errors import ConfigError
from reidflow.losses import (
    ImagePool,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    lsgan_loss,
    relation_consistency_loss,
)
from reidflow.models import build_gan_network, list_gan_networks
from reidflow.models.sda import PatchDiscriminator

MEAN_STD = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def test_registry_lists_and_rejects_unknown():
    assert {"resnet_generator", "patch_discriminator"} <= set(list_gan_networks())
    with pytest.raises(ConfigError, match="unknown GAN network 'nope'"):
        build_gan_network("nope")
    with pytest.raises(ConfigError, match="does not take option"):
        build_gan_network("patch_discriminator", ngf=3)


def test_generator_shape_range_and_structure():
    torch.manual_seed(0)
    g = build_gan_network("resnet_generator", ngf=8, n_blocks=2, n_down=2, **MEAN_STD)
    x = torch.randn(2, 3, 32, 16)
    y = g(x)
    assert y.shape == x.shape
    # sigmoid then ImageNet normalization: every value is a normalized [0, 1] pixel
    low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    high = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.all(y >= low.view(1, 3, 1, 1) - 1e-5) and torch.all(y <= high.view(1, 3, 1, 1) + 1e-5)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 2
    assert all(not m.affine for m in g.modules() if isinstance(m, nn.InstanceNorm2d))
    assert "mean" not in g.state_dict()  # normalization comes from the config, not the weights
    with pytest.raises(ConfigError, match="multiples of 4"):
        g.check_size(30, 16)


def test_discriminator_patch_grid_and_init():
    torch.manual_seed(0)
    d = build_gan_network("patch_discriminator", ndf=64, n_layers=3)
    assert isinstance(d, PatchDiscriminator)
    out = d(torch.randn(2, 3, 128, 64))
    assert out.shape == (2, 1, *d.output_size(128, 64)) == (2, 1, 14, 6)
    convs = [m.weight for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.shape[0] for c in convs] == [64, 128, 256, 512, 1]
    weights = torch.cat([w.detach().flatten() for w in convs])
    assert abs(float(weights.mean())) < 2e-3 and abs(float(weights.std()) - 0.02) < 2e-3
    with pytest.raises(ConfigError, match="too small for n_layers=3"):
        d.check_size(32, 16)
    PatchDiscriminator(ndf=4, n_layers=2).check_size(32, 16)


def test_gan_losses_on_tiny_inputs():
    ones, zeros = torch.ones(2, 1, 3, 2), torch.zeros(2, 1, 3, 2)
    assert float(lsgan_loss(ones, True)) == 0.0 and float(lsgan_loss(zeros, True)) == 1.0
    assert float(lsgan_loss(ones, False)) == 1.0
    assert float(discriminator_loss(ones, zeros)) == 0.0
    assert float(discriminator_loss(zeros, ones)) == pytest.approx(1.0)  # 0.5 * (1 + 1)
    a, b = torch.zeros(1, 3, 4, 2), torch.full((1, 3, 4, 2), 0.5)
    assert float(cycle_loss(b, a)) == pytest.approx(0.5)
    assert float(identity_loss(a, a)) == 0.0


def test_image_pool_fills_then_swaps_and_resumes_exactly():
    pool = ImagePool(size=4, seed=3)
    first = torch.arange(3 * 4 * 2 * 3, dtype=torch.float32).view(3, 3, 2, 4)[:, :, :, :2].contiguous()
    assert torch.equal(pool.query(first), first)  # not full yet: returned as is
    state = pool.state_dict()
    batches = [torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    outputs = [pool.query(b) for b in batches]
    stored = {tuple(t.flatten().tolist()) for t in first} | {
        tuple(t.flatten().tolist()) for b in batches for t in b
    }
    assert all(tuple(img.flatten().tolist()) in stored for out in outputs for img in out)
    assert any(not torch.equal(o, b) for o, b in zip(outputs, batches, strict=True)), "some swap happened"
    resumed = ImagePool(size=4, seed=99)
    resumed.load_state_dict(state)
    again = [resumed.query(b) for b in batches]
    assert all(torch.equal(x, y) for x, y in zip(outputs, again, strict=True))
    assert torch.equal(ImagePool(size=0).query(first), first)


def test_relation_loss_matches_its_definition():
    torch.manual_seed(0)
    e1, e2 = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    d1, d2 = torch.cdist(e1, e1), torch.cdist(e2, e2)
    expected = []
    for i in range(6):
        same = labels == labels[i]
        p = int(torch.where(same, d1[i], torch.tensor(-1.0)).argmax())
        n = int(torch.where(~same, d1[i], torch.tensor(1e9)).argmin())
        ref = torch.softmax(torch.stack([d2[i, p], d2[i, n]]), 0)
        expected.append(-(ref * torch.log_softmax(torch.stack([d1[i, p], d1[i, n]]), 0)).sum())
    got = relation_consistency_loss(e1, e2, labels)
    assert float(got) == pytest.approx(float(torch.stack(expected).mean()), abs=1e-5)
    with pytest.raises(ConfigError, match="no negative pair"):
        relation_consistency_loss(e1, e2, torch.zeros(6, dtype=torch.long))


def test_relation_loss_is_minimal_with_zero_gradient_when_translation_is_identity():
    """translated == source and E_t == E_s: the loss is at its minimum and d loss / d translated = 0."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    encoder = encoder.double()
    source = torch.randn(8, 3, 8, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    translated = source.clone().requires_grad_(True)
    loss = relation_consistency_loss(encoder(translated), encoder(source), labels)
    (grad,) = torch.autograd.grad(loss, translated)
    assert float(grad.abs().max()) < 1e-12
    moved = source + 0.01 * torch.randn_like(source)  # small enough to keep the mined pairs
    assert float(relation_consistency_loss(encoder(moved), encoder(source), labels)) > float(loss)
