"""Re-estimate the BatchNorm statistics a model uses on the target, from un-augmented target images.

Why (measured, docs/methods/mmt.md): during MMT+ the running statistics of the target BN branch drift
to those of the *augmented* pseudo-identity batches (pad + crop borders, flips, only the clustered
images). On the small demo images that drift alone, with the weights frozen, lowered the purity of
the next clustering from 65 % to 55 %. Recomputing the statistics as exact averages over the clean
target train split before each clustering and before export removes it; the weights are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from reidflow.models.norms import DomainSpecificBatchNorm, dsbn_route, has_dsbn, local_statistics


def target_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers a target batch passes through: plain BNs and the ``target`` branch of DSBN pairs."""
    skip = {id(m.source) for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and id(m) not in skip
    ]


@torch.no_grad()
def recompute_target_bn(
    model: nn.Module,
    batches: Iterable[Tensor],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> int:
    """Reset the running mean/var of :func:`target_batchnorms` and set them to the cumulative average
    of the batch statistics over ``batches`` (each batch weighs the same; a batch of one image is
    skipped: training-mode BN has no variance of a single sample); parameters and the other layers'
    buffers are unchanged. Every process must pass the same batches: the statistics are computed
    locally, so each process ends with the single-process result. Returns the number of images seen."""
    layers = target_batchnorms(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    route = dsbn_route(model, "target") if has_dsbn(model) else contextlib.nullcontext()
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        with route, local_statistics():  # every process sees every batch: no reduction needed
            for images in batches:
                if images.shape[0] < 2:  # train-mode BN has no variance of one sample (a last, odd batch)
                    continue
                with autocast() if autocast is not None else contextlib.nullcontext():
                    model(images.to(device))
                seen += int(images.shape[0])
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return seen
