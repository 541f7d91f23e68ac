"""What every backbone offers: a stem, four stages, and their channel counts."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor: ``forward`` returns the final N×C×h×w map (C = ``out_channels``).

    ``forward_stages`` returns the outputs of stages 1-4 (channels ``stage_channels``); the last one
    is the tensor ``forward`` returns. Methods that insert modules after stages 1-3 (SNR, MetaBIN's
    analysis) iterate over :meth:`stage_modules` themselves.
    """

    out_channels: int
    stage_channels: tuple[int, int, int, int]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stage_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = self.forward_stem(x)
        for stage in self.stage_modules():
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stage_modules():
            x = stage(x)
        return x

    def remap_pretrained_key(self, key: str) -> str:
        """Rename one key of a public checkpoint of this family into this module's naming."""
        return key
