"""Losses against hand-computed values, plus gradient checks on tiny double tensors."""

from __future__ import annotations

import math

import pytest
import torch

from reidflow.errors import ConfigError
from reidflow.losses import (
    CrossEntropyLabelSmooth,
    SoftmaxTripletLoss,
    TripletLoss,
    euclidean_dist,
    hard_example_mining,
)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# Four 2-d points: identity 0 at (0,0) and (6,0); identity 1 at (0,4) and (3,4).
POINTS = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
LABELS = torch.tensor([0, 0, 1, 1])
# Pairwise distances: d01 = 6, d02 = 4, d03 = 5, d12 = sqrt(36 + 16) = 7.2111, d13 = 5, d23 = 3.
# Hardest positive / negative per anchor:
#   anchor 0: d_ap = 6, d_an = min(4, 5) = 4        -> d_ap - d_an =  2
#   anchor 1: d_ap = 6, d_an = min(7.2111, 5) = 5   -> 1
#   anchor 2: d_ap = 3, d_an = min(4, 7.2111) = 4   -> -1
#   anchor 3: d_ap = 3, d_an = min(5, 5) = 5        -> -2
GAPS = [2.0, 1.0, -1.0, -2.0]


def test_euclidean_dist_hand_values_and_safe_zero():
    dist = euclidean_dist(POINTS, POINTS)
    expected = torch.tensor(
        [
            [0.0, 6.0, 4.0, 5.0],
            [6.0, 0.0, math.sqrt(52.0), 5.0],
            [4.0, math.sqrt(52.0), 0.0, 3.0],
            [5.0, 5.0, 3.0, 0.0],
        ]
    )
    torch.testing.assert_close(dist, expected, atol=1e-5, rtol=1e-6)
    # identical rows: clamp(1e-12) before sqrt -> 1e-6, and a finite gradient
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    d = euclidean_dist(x, x.detach().clone())
    assert d.item() == pytest.approx(1e-6)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ConfigError, match="M×D and N×D"):
        euclidean_dist(torch.zeros(2, 3), torch.zeros(2, 4))


def test_hard_example_mining_hand_values():
    dist = euclidean_dist(POINTS, POINTS)
    same = LABELS[:, None] == LABELS[None, :]
    d_ap, d_an, valid = hard_example_mining(dist, same, ~same)
    torch.testing.assert_close(d_ap, torch.tensor([6.0, 6.0, 3.0, 3.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(d_an, torch.tensor([4.0, 5.0, 4.0, 5.0]), atol=1e-5, rtol=0)
    assert valid.all()


def test_margin_triplet_hand_value():
    # relu(gap + 0.3): 2.3 + 1.3 + 0 + 0 = 3.6, mean over 4 anchors = 0.9
    loss = TripletLoss(margin=0.3)(POINTS, LABELS)
    assert loss.item() == pytest.approx(0.9, abs=1e-5)
    # margin 0: (2 + 1) / 4 = 0.75
    assert TripletLoss(margin=0.0)(POINTS, LABELS).item() == pytest.approx(0.75, abs=1e-5)


def test_soft_margin_and_softmax_triplet_hand_value():
    # softplus(2) + softplus(1) + softplus(-1) + softplus(-2) = 2.12693 + 1.31326 + 0.31326 + 0.12693
    expected = sum(softplus(g) for g in GAPS) / 4  # = 0.970095
    assert expected == pytest.approx(0.970095, abs=1e-6)
    assert TripletLoss(soft_margin=True)(POINTS, LABELS).item() == pytest.approx(expected, abs=1e-5)
    # -log softmax([-d_ap, -d_an])[0] = log(1 + exp(d_ap - d_an)): the same numbers
    assert SoftmaxTripletLoss()(POINTS, LABELS).item() == pytest.approx(expected, abs=1e-5)
    # a margin shifts d_ap: softplus(gap + 0.5)
    shifted = sum(softplus(g + 0.5) for g in GAPS) / 4
    assert SoftmaxTripletLoss(margin=0.5)(POINTS, LABELS).item() == pytest.approx(shifted, abs=1e-5)


def test_normalize_makes_triplet_scale_invariant():
    scaled = POINTS + torch.tensor([1.0, 1.0])  # avoid the zero vector
    scaled = scaled * torch.tensor([[1.0], [10.0], [0.1], [3.0]])
    plain = TripletLoss(normalize=True)(POINTS + torch.tensor([1.0, 1.0]), LABELS)
    torch.testing.assert_close(TripletLoss(normalize=True)(scaled, LABELS), plain)
    assert not torch.allclose(TripletLoss()(scaled, LABELS), TripletLoss()(POINTS + 1.0, LABELS))


def test_anchor_without_other_positive_uses_itself_and_single_identity_fails():
    # a singleton identity: its d_ap is the self distance (1e-6), so it only pulls negatives away
    feats = torch.tensor([[0.0], [1.0], [5.0]])
    loss = TripletLoss(margin=1.0)(feats, torch.tensor([0, 0, 1]))
    # anchors: 0: relu(1 - 5 + 1) = 0; 1: relu(1 - 4 + 1) = 0; 2: relu(1e-6 - 4 + 1) = 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss = TripletLoss(margin=4.5)(feats, torch.tensor([0, 0, 1]))
    # 0: relu(1 - 5 + 4.5) = 0.5; 1: relu(1 - 4 + 4.5) = 1.5; 2: relu(0 - 4 + 4.5) = 0.5 -> 2.5 / 3
    assert loss.item() == pytest.approx(2.5 / 3, abs=1e-5)
    with pytest.raises(ConfigError, match="no negative pair"):
        TripletLoss()(feats, torch.tensor([3, 3, 3]))
    with pytest.raises(ConfigError, match="labels must have shape"):
        TripletLoss()(feats, torch.tensor([0, 1]))


def test_cross_entropy_label_smooth_hand_value():
    # logits [2, 0, 0], label 0, K = 3, ε = 0.1: q = [0.9 + 0.1/3, 0.1/3, 0.1/3]
    # log p = [2 - L, -L, -L] with L = log(e² + 2)
    big_l = math.log(math.exp(2) + 2)
    expected = -((0.9 + 0.1 / 3) * (2 - big_l) + 2 * (0.1 / 3) * (-big_l))  # = 0.372878
    assert expected == pytest.approx(0.372878, abs=1e-6)
    loss = CrossEntropyLabelSmooth(3, epsilon=0.1)(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # ε = 0 is the plain cross-entropy
    plain = CrossEntropyLabelSmooth(3, epsilon=0.0)(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    assert plain.item() == pytest.approx(big_l - 2, abs=1e-6)


def test_cross_entropy_rejects_bad_shapes_and_labels():
    ce = CrossEntropyLabelSmooth(3)
    with pytest.raises(ConfigError, match="N×3"):
        ce(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        ce(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match="epsilon"):
        CrossEntropyLabelSmooth(3, epsilon=1.0)


def test_gradcheck_on_tiny_doubles():
    torch.manual_seed(0)
    feats = torch.randn(6, 3, dtype=torch.double, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    other = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(euclidean_dist, (feats, other))
    assert torch.autograd.gradcheck(lambda f: TripletLoss(margin=10.0)(f, labels), (feats,))
    assert torch.autograd.gradcheck(lambda f: TripletLoss(soft_margin=True)(f, labels), (feats,))
    assert torch.autograd.gradcheck(lambda f: SoftmaxTripletLoss(normalize=True)(f, labels), (feats,))
    logits = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: CrossEntropyLabelSmooth(5)(z, torch.tensor([0, 4, 2])), (logits,)
    )


def test_triplet_gradient_direction_pulls_positive_and_pushes_negative():
    feats = POINTS.clone().requires_grad_(True)
    TripletLoss(margin=0.3)(feats, LABELS).backward()
    # anchor 0 at (0,0): hardest positive (6,0) at 6, hardest negative (0,4) at 4, active (6 - 4 + 0.3 > 0).
    # Pulling the positive closer means decreasing its x: dL/dx1 > 0 (0.25 from anchor 0, plus
    # 0.25 - 0.15 from anchor 1's own active triplet). Pushing the negative away means increasing
    # its y: dL/dy2 = -(1/4)·(4/4) < 0, and only anchor 0 mines point 2.
    assert feats.grad[1, 0].item() == pytest.approx(0.35, abs=1e-5)
    assert feats.grad[2, 1].item() == pytest.approx(-0.25, abs=1e-5)
