"""MetaBIN's BN/IN mixture as one autograd function with a hand-derived backward.

``y = ρ(γ_B x̂_B + β_B) + (1-ρ)(γ_I x̂_I + β_I)`` is, per (sample, channel), an affine map of
``x``: ``y = a·x + b``. The forward reduces ``x`` once for the instance statistics (the batch ones
follow by the law of total variance) and writes ``y`` once. The backward needs two reductions
(``Σ g`` and ``Σ g·x`` per sample and channel) and one pass for ``dx = a·g + p·x + q``. Composed
from autograd primitives (batch norm + instance norm + blend) the same layer costs about 3x a
BatchNorm2d on CPU; this one about 1.3x.

With ``x̂_B = (x-μ_B)s_B``, ``x̂_I = (x-μ_I)s_I``, ``g_B = ργ_B``, ``g_I = (1-ρ)γ_I``, ``M = H·W``,
``G_B = Σ_{n,hw} g·x̂_B``, ``G_I = Σ_{hw} g·x̂_I``, ``S = Σ_{hw} g``:

    dx = a·g − g_B s_B/(N M)·(Σ_n S + x̂_B G_B) − g_I s_I/M·(S + x̂_I G_I)

(the batch term drops when running statistics are used). The backward is first-order only: MetaBIN's
second-order meta step uses the layer's composed path (:func:`reidflow.models.norms.twice_differentiable`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class MetaBINFunction(torch.autograd.Function):
    """``apply(x, rho, bn_weight, bn_bias, in_weight, in_bias, running_mean, running_var, eps)``.

    ``running_mean``/``running_var``: ``None`` to normalize the BN branch with batch statistics.
    Returns ``(y, batch_mean, batch_var)`` (the batch statistics detached, for the running update;
    ``None`` in eval mode).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        rho: Tensor,
        bn_weight: Tensor,
        bn_bias: Tensor,
        in_weight: Tensor,
        in_bias: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        n, c, h, w = x.shape
        # instance statistics by the native (Welford) batch-norm kernel on the N·C-channel view: twice
        # as fast as var_mean on CPU and numerically safe (its normalized output is discarded)
        _, mean_i, s_i = torch.native_batch_norm(
            x.reshape(1, n * c, h, w), None, None, None, None, True, 0.0, eps
        )
        mean_i, s_i = mean_i.view(n, c), s_i.view(n, c)
        var_i = s_i.pow(-2) - eps
        use_batch = running_mean is None
        if use_batch:
            mean_b = mean_i.mean(0)
            var_b = var_i.mean(0) + (mean_i - mean_b).pow(2).mean(0)
        else:
            mean_b, var_b = running_mean, running_var
        s_b = torch.rsqrt(var_b + eps)  # C
        r = rho.clamp(0.0, 1.0)
        g_b, g_i = r * bn_weight, (1.0 - r) * in_weight
        scale = g_b * s_b + g_i * s_i
        shift = r * bn_bias - g_b * s_b * mean_b + (1.0 - r) * in_bias - g_i * s_i * mean_i
        y = torch.addcmul(shift[..., None, None], x, scale[..., None, None])
        ctx.use_batch = use_batch
        ctx.save_for_backward(x, rho, bn_weight, bn_bias, in_weight, in_bias, mean_i, s_i, mean_b, s_b)
        if use_batch:
            return y, mean_b.detach(), var_b.detach()
        return y, None, None

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, *_unused: Any) -> tuple[Tensor | None, ...]:
        x, rho, bn_weight, bn_bias, in_weight, in_bias, mean_i, s_i, mean_b, s_b = ctx.saved_tensors
        n, _, h, w = x.shape
        m = h * w
        grad = grad.contiguous()
        sum_g = grad.sum(dim=(2, 3))  # N×C
        sum_gx = torch.einsum("nchw,nchw->nc", grad, x)
        g_xi = s_i * (sum_gx - mean_i * sum_g)  # Σ_hw g·x̂_I, N×C
        g_xb = s_b * (sum_gx - mean_b * sum_g)  # Σ_hw g·x̂_B per sample, N×C
        total_g, total_gxb, total_gxi = sum_g.sum(0), g_xb.sum(0), g_xi.sum(0)  # C
        r = rho.clamp(0.0, 1.0)
        g_b, g_i = r * bn_weight, (1.0 - r) * in_weight
        scale = g_b * s_b + g_i * s_i
        # dx = scale·g + p·x + q
        k_i = g_i * s_i / m
        p = -k_i * s_i * g_xi
        q = -k_i * sum_g + k_i * s_i * g_xi * mean_i
        if ctx.use_batch:
            k_b = g_b * s_b / (n * m)
            p = p - k_b * s_b * total_gxb
            q = q - k_b * total_g + k_b * s_b * total_gxb * mean_b
        grad_x = torch.addcmul(q[..., None, None], x, p[..., None, None]).addcmul_(
            grad, scale[..., None, None]
        )
        # parameters
        bn_part = bn_weight * total_gxb + bn_bias * total_g  # Σ g·(γ_B x̂_B + β_B)
        in_part = in_weight * total_gxi + in_bias * total_g  # Σ g·(γ_I x̂_I + β_I)
        inside = (rho >= 0) & (rho <= 1)  # clamp passes the gradient on [0, 1]
        grad_rho = torch.where(inside, bn_part - in_part, torch.zeros_like(rho))
        return (
            grad_x,
            grad_rho,
            r * total_gxb,
            r * total_g,
            (1.0 - r) * total_gxi,
            (1.0 - r) * total_g,
            None,
            None,
            None,
        )
