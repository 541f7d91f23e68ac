"""Cross-entropy with label smoothing (Szegedy et al. 2016), as used by every re-ID recipe here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError


class CrossEntropyLabelSmooth(nn.Module):
    """``mean_i sum_k -q_ik log p_ik`` with ``q = (1-ε)·onehot(y) + ε/K``."""

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ConfigError(f"CrossEntropyLabelSmooth: num_classes must be > 0, got {num_classes}")
        if not 0.0 <= epsilon < 1.0:
            raise ConfigError(f"CrossEntropyLabelSmooth: epsilon must be in [0, 1), got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ConfigError(
                f"CrossEntropyLabelSmooth: logits must be N×{self.num_classes}, got {tuple(logits.shape)}"
            )
        if labels.shape != (logits.shape[0],):
            raise ConfigError(
                f"CrossEntropyLabelSmooth: labels must have shape ({logits.shape[0]},), "
                f"got {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(
                f"CrossEntropyLabelSmooth: labels must be in [0, {self.num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        log_probs = F.log_softmax(logits, dim=1)
        targets = F.one_hot(labels.long(), self.num_classes).to(log_probs.dtype)
        targets = (1.0 - self.epsilon) * targets + self.epsilon / self.num_classes
        return -(targets * log_probs).sum(dim=1).mean()
