"""MetaBIN's intra-domain scatter and inter-domain shuffle losses on hand-checkable batches."""

from __future__ import annotations

import math

import pytest
import torch

from reidflow.errors import ConfigError
from reidflow.losses import inter_domain_shuffle_loss, intra_domain_scatter_loss


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_scatter_loss_hand_value() -> None:
    # domain 0: (1,0) and (0,1) -> centre (0.5, 0.5), |centre| = 1/sqrt2; cos = 0.5 / (1/sqrt2) = 1/sqrt2 each
    # domain 1: (2,0) and (3,0) normalize to (1,0) twice -> centre (1,0), cos = 1 each (shows the L2 step)
    # loss = mean over domains = (1/sqrt2 + 1) / 2 = 0.853553...
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [3.0, 0.0]])
    domains = torch.tensor([0, 0, 1, 1])
    loss = intra_domain_scatter_loss(features, domains)
    assert loss.item() == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)


def test_scatter_loss_averages_domains_not_samples() -> None:
    # domain 0 has 3 samples (1,0),(0,1),(0,1): centre (1/3, 2/3), |c| = sqrt5/3;
    #   cos with (1,0) = (1/3)/(sqrt5/3) = 1/sqrt5; with (0,1) = 2/sqrt5 -> mean (1 + 2 + 2)/(3 sqrt5) = 5/(3 sqrt5)
    # domain 1 has 1 sample: cos = 1.  loss = (5/(3 sqrt5) + 1) / 2  (a per-sample mean would weight domain 0 3x)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [4.0, 4.0]])
    domains = torch.tensor([5, 5, 5, 9])
    expected = (5 / (3 * math.sqrt(5)) + 1) / 2
    assert intra_domain_scatter_loss(features, domains).item() == pytest.approx(expected, abs=1e-6)


def test_scatter_loss_gradient_spreads_a_domain() -> None:
    features = torch.tensor([[1.0, 0.1], [1.0, -0.1]], requires_grad=True)
    loss = intra_domain_scatter_loss(features, torch.tensor([0, 0]))
    loss.backward()
    stepped = features.detach() - 0.5 * features.grad
    assert intra_domain_scatter_loss(stepped, torch.tensor([0, 0])) < loss


def test_shuffle_loss_hand_value() -> None:
    # 1-d features; domain A: a0 (pid 0) at 0, a1 (pid 1) at 1; domain B: b0 (pid 0) at 3, b1 (pid 2) at 5.
    # positives = self + other domain (any pid); negatives = same domain, other pid.
    # a0: d_ap = max(0, |0-3|, |0-5|) = 5, d_an = |0-1| = 1 -> softplus(4)
    # a1: d_ap = max(0, 2, 4) = 4,        d_an = 1          -> softplus(3)
    # b0: d_ap = max(0, 3, 2) = 3,        d_an = |3-5| = 2  -> softplus(1)
    # b1: d_ap = max(0, 5, 4) = 5,        d_an = 2          -> softplus(3)
    # (self-distance is sqrt(1e-12) = 1e-6, never the max here)
    features = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    pids = torch.tensor([0, 1, 0, 2])
    domains = torch.tensor([0, 0, 1, 1])
    expected = (_softplus(4) + _softplus(3) + _softplus(1) + _softplus(3)) / 4  # = 2.857146...
    assert inter_domain_shuffle_loss(features, pids, domains).item() == pytest.approx(expected, abs=1e-5)


def test_shuffle_loss_same_domain_same_pid_is_neither_positive_nor_negative() -> None:
    # add a2 (domain A, pid 0) at 10 to the batch above.
    # a0: positives {self, b0 3, b1 5} -> 5 (a2 at distance 10 is NOT a positive); negatives {a1} -> 1: softplus(4)
    # a1: positives {self, 2, 4} -> 4; negatives {a0 1, a2 9} -> 1: softplus(3)
    # a2: positives {self, b0 7, b1 5} -> 7; negatives {a1 9} -> 9 (a0 is same pid: not a negative): softplus(-2)
    # b0: positives {self, a0 3, a1 2, a2 7} -> 7; negatives {b1 2}: softplus(5)
    # b1: positives {a0 5, a1 4, a2 5} -> 5; negatives {b0 2}: softplus(3)
    features = torch.tensor([[0.0], [1.0], [10.0], [3.0], [5.0]])
    pids = torch.tensor([0, 1, 0, 0, 2])
    domains = torch.tensor([0, 0, 0, 1, 1])
    expected = (_softplus(4) + _softplus(3) + _softplus(-2) + _softplus(5) + _softplus(3)) / 5
    assert inter_domain_shuffle_loss(features, pids, domains).item() == pytest.approx(expected, abs=1e-5)


def test_shuffle_loss_rejects_a_domain_with_one_identity() -> None:
    features = torch.randn(4, 3)
    with pytest.raises(ConfigError, match=r"domain\(s\) \[7\].*no negative"):
        inter_domain_shuffle_loss(features, torch.tensor([0, 1, 2, 2]), torch.tensor([3, 3, 7, 7]))


@pytest.mark.parametrize(
    ("features", "pids", "domains", "what"),
    [
        (torch.randn(4), torch.arange(4), torch.zeros(4), "features"),
        (torch.randn(4, 2), torch.arange(3), torch.zeros(4), "pids"),
        (torch.randn(4, 2), torch.arange(4), torch.zeros(5), "domains"),
        (torch.randn(0, 2), torch.arange(0), torch.zeros(0), "features"),
    ],
)
def test_shape_errors_name_the_argument(features, pids, domains, what) -> None:
    with pytest.raises(ConfigError, match=what):
        inter_domain_shuffle_loss(features, pids, domains)
    if what != "pids":
        with pytest.raises(ConfigError, match=what):
            intra_domain_scatter_loss(features, domains)
