"""One factory for every 2-d normalization layer of a backbone.

Backbones never instantiate a norm class directly: they call :func:`make_norm` with the kind they
were given, so a method that changes normalization (IN, IBN, BIN, MetaBIN, DSBN) only registers a
builder with :func:`register_norm` and never edits backbone code.

Built-in kinds:

``bn``   plain :class:`torch.nn.BatchNorm2d` (keys identical to public checkpoints).
``in``   affine instance norm; always instance statistics, in training and at eval.
``ibn``  IBN-a split (Pan et al. 2018): the first ``in_ratio`` of the channels (default half) go
         through IN, the rest through BN; children ``inorm`` and ``bn``.
``bin``  batch-instance norm (Nam & Kim 2018): ``y = γ(ρ·x̂_B + (1-ρ)·x̂_I) + β`` with one shared
         affine and a per-channel gate ``rho`` in [0, 1] (clamped in forward; call
         :func:`clamp_gates_` after each optimizer step to keep the stored value in range too).
``metabin`` MetaBIN's layer (Choi et al. 2021): separate BN and IN affines,
         ``y = ρ·(γ_B x̂_B + β_B) + (1-ρ)·(γ_I x̂_I + β_I)``, gate ``rho`` init 1 (pure BN).
         :func:`running_stats_held` makes training-mode forwards use batch statistics without
         updating the running ones (MetaBIN's meta-train/meta-test forwards).
``dsbn`` domain-specific BN (MMT+): a (source, target) pair of BNs, ``[source | target]`` batches
         split between them in training, the target branch at eval; batch statistics reduced
         across processes. :func:`convert_to_dsbn` pairs every BN of a model (1-d and 2-d, the
         BNNeck included), :func:`fold_dsbn` turns it back into a plain-BN model (target branch).

Every layer built here can be initialized from an existing BatchNorm2d (``load_from_batchnorm``):
that is what :func:`convert_norms` uses to swap the BNs of a built (possibly pretrained) model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError

NormBuilder = Callable[..., nn.Module]

_NORM_BUILDERS: dict[str, NormBuilder] = {}


def register_norm(kind: str, builder: NormBuilder, *, overwrite: bool = False) -> None:
    """Make ``make_norm(kind, C, **kw)`` call ``builder(C, **kw)``.

    A builder's module should offer ``load_from_batchnorm(bn)`` so :func:`convert_norms` can
    initialize it from a pretrained BN (BN statistics and affine go to its BN branch).
    """
    if not kind or not isinstance(kind, str):
        raise ConfigError(f"norm kind must be a non-empty string, got {kind!r}")
    if kind in _NORM_BUILDERS and not overwrite:
        raise ConfigError(f"norm kind {kind!r} is already registered (pass overwrite=True to replace it)")
    _NORM_BUILDERS[kind] = builder


def list_norms() -> list[str]:
    """Registered norm kinds, sorted."""
    return sorted(_NORM_BUILDERS)


def check_norm_kind(kind: str, what: str = "norm") -> None:
    """Raise a ConfigError naming ``what`` and the known kinds if ``kind`` is not registered."""
    if kind not in _NORM_BUILDERS:
        raise ConfigError(f"unknown {what} kind {kind!r}; known kinds: {', '.join(list_norms())}")


def make_norm(kind: str, num_features: int, **kw) -> nn.Module:
    """Build the norm layer ``kind`` over ``num_features`` channels."""
    check_norm_kind(kind)
    if int(num_features) <= 0:
        raise ConfigError(f"norm {kind!r}: num_features must be > 0, got {num_features}")
    return _NORM_BUILDERS[kind](int(num_features), **kw)


class InstanceNorm2d(nn.InstanceNorm2d):
    """Affine instance norm that never tracks running statistics (instance stats at eval too)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)

    def load_from_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """Take BN's affine (IN has no running statistics to take)."""
        _copy_affine(bn, self, slice(None))


class InstanceBatchNorm2d(nn.Module):
    """IBN-a: IN on the first ``in_ratio`` of the channels, BN on the rest, concatenated."""

    def __init__(self, num_features: int, in_ratio: float = 0.5, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if not 0.0 < in_ratio < 1.0:
            raise ConfigError(f"norm 'ibn': in_ratio must be in (0, 1), got {in_ratio}")
        self.num_features = num_features
        self.in_channels = int(num_features * in_ratio)
        if not 0 < self.in_channels < num_features:
            raise ConfigError(f"norm 'ibn': {num_features} channels cannot be split with in_ratio={in_ratio}")
        self.inorm = InstanceNorm2d(self.in_channels, eps=eps)
        self.bn = nn.BatchNorm2d(num_features - self.in_channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in, x_bn = torch.split(x, [self.in_channels, self.num_features - self.in_channels], dim=1)
        return torch.cat([self.inorm(x_in.contiguous()), self.bn(x_bn.contiguous())], dim=1)

    def load_from_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """IN half takes BN's affine of its channels; BN half takes affine and running stats of its."""
        _check_width(bn, self.num_features)
        _copy_affine(bn, self.inorm, slice(0, self.in_channels))
        _copy_batchnorm(bn, self.bn, slice(self.in_channels, self.num_features))


class BatchInstanceNorm2d(nn.Module):
    """BIN (Nam & Kim 2018): ``γ(ρ·x̂_B + (1-ρ)·x̂_I) + β``, shared affine, gate ``rho`` per channel."""

    def __init__(self, num_features: int, rho_init: float = 1.0, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if not 0.0 <= rho_init <= 1.0:
            raise ConfigError(f"norm 'bin': rho_init must be in [0, 1], got {rho_init}")
        self.num_features = num_features
        self.eps = eps
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.rho = nn.Parameter(torch.full((num_features,), float(rho_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_batch = self.bn(x)
        x_inst = F.instance_norm(x, eps=self.eps)
        rho = self.rho.clamp(0.0, 1.0).view(1, -1, 1, 1)
        mixed = rho * x_batch + (1.0 - rho) * x_inst
        return mixed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def load_from_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """Running stats go to the BN branch, BN's affine becomes the shared affine."""
        _check_width(bn, self.num_features)
        _copy_affine(bn, self, slice(None))
        _copy_batchnorm(bn, self.bn, slice(None))


class MetaBatchInstanceNorm2d(nn.Module):
    """MetaBIN: ``ρ·(γ_B x̂_B + β_B) + (1-ρ)·(γ_I x̂_I + β_I)`` with a per-channel gate ``rho``.

    The BN branch is a plain affine ``BatchNorm2d`` (child ``bn``: pretrained BN weights and running
    statistics load into it); the IN branch has its own affine (``in_weight``, ``in_bias``, 1 and 0).
    ``rho`` starts at ``rho_init`` (1: the layer starts as the BN it replaces) and is clamped to
    [0, 1] in forward; :func:`clamp_gates_` clamps the stored value after an update.
    """

    def __init__(self, num_features: int, rho_init: float = 1.0, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if not 0.0 <= rho_init <= 1.0:
            raise ConfigError(f"norm 'metabin': rho_init must be in [0, 1], got {rho_init}")
        self.num_features = num_features
        self.eps = eps
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.in_weight = nn.Parameter(torch.ones(num_features))
        self.in_bias = nn.Parameter(torch.zeros(num_features))
        self.rho = nn.Parameter(torch.full((num_features,), float(rho_init)))
        self.hold_running_stats = False
        self.twice_differentiable = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.twice_differentiable or (
            isinstance(self.bn, nn.SyncBatchNorm) and self.training and not self.hold_running_stats
        ):
            return self._two_branch(x)  # double backward / batch statistics across processes
        return self._fused(x)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """One pass forward, two reductions + one pass backward (:mod:`reidflow.models.fused_metabin`)."""
        from reidflow.models.fused_metabin import MetaBINFunction

        if x.dim() != 4:
            raise ConfigError(f"norm 'metabin': expected an N×C×H×W input, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        bn = self.bn
        use_batch = self.training or bn.running_mean is None
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y, mean_b, var_b = MetaBINFunction.apply(
            xf,
            self.rho,
            bn.weight,
            bn.bias,
            self.in_weight,
            self.in_bias,
            None if use_batch else bn.running_mean,
            None if use_batch else bn.running_var,
            self.eps,
        )
        if self.training and not self.hold_running_stats and bn.running_mean is not None:
            self._update_running_stats(mean_b, var_b, n * h * w)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """What BatchNorm2d does in training: unbiased variance, momentum (or cumulative) average."""
        bn = self.bn
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)

    def _two_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The definition, term by term (used with SyncBatchNorm, and as the tests' reference)."""
        if self.training and self.hold_running_stats:  # batch statistics, running ones untouched
            x_batch = F.batch_norm(x, None, None, self.bn.weight, self.bn.bias, training=True, eps=self.eps)
        else:
            x_batch = self.bn(x)
        x_inst = F.instance_norm(x, weight=self.in_weight, bias=self.in_bias, eps=self.eps)
        rho = self.rho.clamp(0.0, 1.0).view(1, -1, 1, 1)
        return rho * x_batch + (1.0 - rho) * x_inst

    def load_from_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """BN weights and running statistics go to the BN branch; the IN affine stays 1 / 0."""
        _check_width(bn, self.num_features)
        _copy_batchnorm(bn, self.bn, slice(None))


_GATED = (BatchInstanceNorm2d, MetaBatchInstanceNorm2d)


def clamp_gates_(model: nn.Module) -> None:
    """Clamp every BIN/MetaBIN gate of ``model`` to [0, 1] in place (call after an optimizer step)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _GATED):
                module.rho.clamp_(0.0, 1.0)


@contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """MetaBIN layers inside use the composed (slower) forward, whose backward can be differentiated
    again: what a second-order meta step needs. The default fused forward is first-order only."""
    layers = [m for m in model.modules() if isinstance(m, MetaBatchInstanceNorm2d)]
    for m in layers:
        m.twice_differentiable = True
    try:
        yield
    finally:
        for m in layers:
            m.twice_differentiable = False


def gate_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The gates ρ of every BIN/MetaBIN layer by parameter name (MetaBIN's second parameter group)."""
    return {
        f"{name}.rho" if name else "rho": m.rho for name, m in model.named_modules() if isinstance(m, _GATED)
    }


@contextmanager
def running_stats_held(model: nn.Module) -> Iterator[None]:
    """Training-mode forwards inside use batch statistics but leave every running statistic as it was.

    MetaBIN layers switch to pure batch statistics; plain BatchNorm layers (e.g. the BNNeck) get
    momentum 0 and their batch counter restored, so their running statistics stay unchanged too.
    """
    metabin = [m for m in model.modules() if isinstance(m, MetaBatchInstanceNorm2d)]
    inner = {id(m.bn) for m in metabin}
    plain = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inner
    ]
    saved = [
        (m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in plain
    ]
    for m in metabin:
        m.hold_running_stats = True
    for m in plain:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m in metabin:
            m.hold_running_stats = False
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _check_width(bn: nn.Module, num_features: int) -> None:
    if bn.num_features != num_features:
        raise ConfigError(
            f"cannot initialize a {num_features}-channel norm from a {bn.num_features}-channel BN"
        )


def _copy_affine(src: nn.Module, dst: nn.Module, channels: slice) -> None:
    with torch.no_grad():
        if getattr(src, "weight", None) is not None and getattr(dst, "weight", None) is not None:
            dst.weight.copy_(src.weight[channels])
            dst.bias.copy_(src.bias[channels])


def _copy_batchnorm(src: nn.Module, dst: nn.BatchNorm2d, channels: slice) -> None:
    """Copy running stats (and affine when both have one) of ``channels`` of ``src`` into ``dst``."""
    with torch.no_grad():
        if src.running_mean is not None and dst.running_mean is not None:
            dst.running_mean.copy_(src.running_mean[channels])
            dst.running_var.copy_(src.running_var[channels])
            dst.num_batches_tracked.copy_(src.num_batches_tracked)
        _copy_affine(src, dst, channels)


def _is_convertible_batchnorm(module: nn.Module) -> bool:
    # Only BatchNorm2d: a SyncBatchNorm may wrap a 1-d BNNeck, so run convert_norms before SyncBN conversion.
    return isinstance(module, nn.BatchNorm2d)


def _init_from_batchnorm(new: nn.Module, bn: nn.Module, kind: str) -> None:
    if isinstance(new, nn.BatchNorm2d):
        _check_width(bn, new.num_features)
        _copy_batchnorm(bn, new, slice(None))
    elif hasattr(new, "load_from_batchnorm"):
        new.load_from_batchnorm(bn)
    else:
        raise ConfigError(
            f"norm kind {kind!r} builds {type(new).__name__}, which has no load_from_batchnorm(bn); "
            "it cannot replace an existing BatchNorm layer"
        )


def convert_norms(model: nn.Module, kind: str, **kw) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` (in place) by ``make_norm(kind, C, **kw)``.

    The new layer is initialized from the BN it replaces (weights, biases, running statistics into
    its BN branch), keeps the BN's device and dtype and its training mode. BNs that are themselves a
    branch of a composite norm (e.g. the BN half of ``ibn``) and 1-d BNs (the BNNeck) are left alone.
    Convert before ``nn.SyncBatchNorm.convert_sync_batchnorm`` (SyncBN layers are not touched).
    Returns ``model`` for chaining.
    """
    check_norm_kind(kind)
    for parent in list(model.modules()):
        if _is_composite_norm(parent):
            continue
        for name, child in list(parent.named_children()):
            if not _is_convertible_batchnorm(child):
                continue
            new = make_norm(kind, child.num_features, **kw)
            _init_from_batchnorm(new, child, kind)
            ref = child.running_mean if child.running_mean is not None else child.weight
            if ref is not None:
                new.to(device=ref.device, dtype=ref.dtype)
            new.train(child.training)
            setattr(parent, name, new)
    return model


def _is_composite_norm(module: nn.Module) -> bool:
    """A norm built from branches (its inner BN belongs to it and is not a backbone norm)."""
    return hasattr(module, "load_from_batchnorm") and not isinstance(module, nn.BatchNorm2d)


# ---------------------------------------------------------------------------------------------
# DSBN: domain-specific batch norm (MMT+)

DomainRoute = str  # "split" | "source" | "target"
_ROUTES = ("split", "source", "target")


class _CrossProcessSums(torch.autograd.Function):
    """All-reduce (sum) in forward; the gradient is all-reduced (sum) in backward, as SyncBN does."""

    @staticmethod
    def forward(ctx: Any, sums: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        out = sums.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


_LOCAL_STATISTICS = [False]


@contextmanager
def local_statistics() -> Iterator[None]:
    """Inside, DSBN computes training-mode statistics from this process's batch only: for passes in
    which every process forwards the same images (re-estimating BN statistics), where a cross-process
    reduction would only change the unbiased-variance count."""
    saved = _LOCAL_STATISTICS[0]
    _LOCAL_STATISTICS[0] = True
    try:
        yield
    finally:
        _LOCAL_STATISTICS[0] = saved


def _world_size() -> int:
    import torch.distributed as dist

    if _LOCAL_STATISTICS[0]:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DomainSpecificBatchNorm(nn.Module):
    """A (source, target) pair of BatchNorms (children ``source`` and ``target``, same class and shape).

    Routing (``route``; ``None`` = automatic): in training the batch is ``[source | target]``, split
    at ``split_at`` (default: half the batch), each part through its own branch; in eval everything
    goes through ``target``. ``"source"``/``"target"`` send the whole batch through one branch
    (:func:`dsbn_route` sets it for a whole model).

    Under ``torch.distributed`` (gloo or NCCL) the training-mode batch statistics of each branch are
    reduced across processes here (sums, sums of squares and counts, all-reduced; gradients too), so
    a step gives the same result on any number of processes with the same global batch. PyTorch's
    SyncBatchNorm is CUDA-only; this runs on CPU as well.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or isinstance(bn, nn.SyncBatchNorm):
            raise ConfigError(f"dsbn: expected a BatchNorm1d/2d layer to duplicate, got {type(bn).__name__}")
        self.source = copy.deepcopy(bn)
        self.target = copy.deepcopy(bn)
        self.num_features = bn.num_features
        self.route: DomainRoute | None = None
        self.split_at: int | None = None

    def load_from_batchnorm(self, bn: nn.Module) -> None:
        """Both branches start as ``bn`` (affine and running statistics)."""
        _check_width(bn, self.num_features)
        for branch in (self.source, self.target):
            with torch.no_grad():
                branch.load_state_dict(bn.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self.route or ("split" if self.training else "target")
        if route not in _ROUTES:
            raise ConfigError(f"dsbn: route must be one of {', '.join(_ROUTES)}, got {route!r}")
        if route != "split":
            return self._branch(self.source if route == "source" else self.target, x)
        n = x.shape[0]
        cut = n // 2 if self.split_at is None else int(self.split_at)
        if self.split_at is None and n % 2:
            raise ConfigError(f"dsbn: a [source | target] batch needs an even size to split in half, got {n}")
        if not 0 < cut < n:
            raise ConfigError(f"dsbn: split_at={cut} must leave both domains a sample (batch {n})")
        return torch.cat([self._branch(self.source, x[:cut]), self._branch(self.target, x[cut:])], dim=0)

    def _branch(self, bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return bn(x)
        return _batch_norm_across_processes(bn, x)


def _batch_norm_across_processes(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BN whose statistics cover every process's part of the batch."""
    dims = [0, *range(2, x.dim())]
    xf = x.double()
    count = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float64, device=x.device)
    local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
    total = _CrossProcessSums.apply(local)
    c = bn.num_features
    n = total[2 * c]
    mean = total[:c] / n
    var = (total[c : 2 * c] / n - mean * mean).clamp(min=0.0)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var.detach() * (n / (n - 1).clamp(min=1.0))
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    shape = [1, c] + [1] * (x.dim() - 2)
    scale = torch.rsqrt(var + bn.eps)
    y = (xf - mean.view(shape)) * scale.view(shape)
    if bn.affine:
        y = y * bn.weight.double().view(shape) + bn.bias.double().view(shape)
    return y.to(x.dtype)


def convert_to_dsbn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm (1-d and 2-d, the BNNeck included) of ``model`` in place by a DSBN pair
    initialized from it (both branches a copy: class, weights, statistics, ``requires_grad``).

    BIN/MetaBIN layers cannot be paired (their BN branch is read directly); they raise a ConfigError.
    Returns ``model``.
    """
    gated = [name for name, m in model.named_modules() if isinstance(m, _GATED)]
    if gated:
        raise ConfigError(
            f"dsbn: cannot pair the gated norm layer {gated[0]!r}; build the model with norm 'bn'/'ibn'"
        )
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ConfigError("dsbn: convert a model that contains BatchNorm layers, not a BatchNorm itself")
    for parent in list(model.modules()):
        if isinstance(parent, DomainSpecificBatchNorm):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, DomainSpecificBatchNorm(child))
    return model


def fold_dsbn(model: nn.Module, branch: str = "target") -> nn.Module:
    """Replace every DSBN pair of ``model`` in place by its ``branch`` BatchNorm: a plain-BN model whose
    state dict has the keys of the model before :func:`convert_to_dsbn` (what deployment reads)."""
    if branch not in ("source", "target"):
        raise ConfigError(f"fold_dsbn: branch must be 'source' or 'target', got {branch!r}")
    if isinstance(model, DomainSpecificBatchNorm):
        raise ConfigError("fold_dsbn: fold a model containing DSBN layers, not a DSBN layer itself")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DomainSpecificBatchNorm):
                setattr(parent, name, getattr(child, branch))
    return model


def has_dsbn(model: nn.Module) -> bool:
    return any(isinstance(m, DomainSpecificBatchNorm) for m in model.modules())


@contextmanager
def dsbn_route(model: nn.Module, route: DomainRoute | None, split_at: int | None = None) -> Iterator[None]:
    """Inside, every DSBN layer of ``model`` routes as ``route`` ("split" at ``split_at``, or "source",
    "target"; ``None`` = automatic); the previous routing is restored on exit."""
    if route is not None and route not in _ROUTES:
        raise ConfigError(f"dsbn: route must be one of {', '.join(_ROUTES)}, got {route!r}")
    layers = [m for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)]
    saved = [(m.route, m.split_at) for m in layers]
    for m in layers:
        m.route, m.split_at = route, split_at
    try:
        yield
    finally:
        for m, (r, s) in zip(layers, saved, strict=True):
            m.route, m.split_at = r, s


def _build_dsbn(num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    return DomainSpecificBatchNorm(nn.BatchNorm2d(num_features, eps=eps, momentum=momentum))


def _build_bn(num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)


register_norm("bn", _build_bn)
register_norm("in", InstanceNorm2d)
register_norm("ibn", InstanceBatchNorm2d)
register_norm("bin", BatchInstanceNorm2d)
register_norm("metabin", MetaBatchInstanceNorm2d)
register_norm("dsbn", _build_dsbn)


def gate_statistics(model: nn.Module) -> list[dict[str, float | int | str]]:
    """Per gated layer, in module order: name, channels, mean / min / 10th / 90th percentile / max of ρ."""
    rows: list[dict[str, float | int | str]] = []
    for name, rho in gate_parameters(model).items():
        values = rho.detach().float().clamp(0.0, 1.0).cpu()
        p10, p90 = torch.quantile(values, torch.tensor([0.1, 0.9])).tolist()
        rows.append(
            {
                "layer": name.removesuffix(".rho"),
                "channels": int(values.numel()),
                "mean": round(float(values.mean()), 4),
                "min": round(float(values.min()), 4),
                "p10": round(p10, 4),
                "p90": round(p90, 4),
                "max": round(float(values.max()), 4),
            }
        )
    return rows
