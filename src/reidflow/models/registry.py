"""Backbones by name: ``build_backbone("osnet_x1_0", norm="bn")`` and ``list_backbones()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from reidflow.errors import ConfigError

BackboneBuilder = Callable[..., nn.Module]

_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator: make ``build_backbone(name, ...)`` call the decorated builder.

    A builder takes ``norm: str`` and ``last_stride: int`` keywords (plus its own) and returns a
    :class:`~reidflow.models.backbones.base.Backbone`.
    """

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _BACKBONES:
            raise ConfigError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = builder
        return builder

    return decorate


def _ensure_builtin_backbones() -> None:
    import reidflow.models.backbones  # noqa: F401  (registers the built-in families)


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    _ensure_builtin_backbones()
    return sorted(_BACKBONES)


def build_backbone(
    name: str, norm: str = "bn", last_stride: int = 1, pretrained: str | None = None, **kw
) -> nn.Module:
    """Build backbone ``name`` with every norm layer of kind ``norm``.

    ``last_stride`` (1 or 2) is the stride of the last stage; ``pretrained`` is a local path or a
    URL of weights loaded with :func:`reidflow.models.pretrained.load_pretrained` (key mapping auto).
    """
    from reidflow.models.norms import check_norm_kind

    _ensure_builtin_backbones()
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(_BACKBONES))}")
    check_norm_kind(norm)
    if last_stride not in (1, 2):
        raise ConfigError(f"backbone {name!r}: last_stride must be 1 or 2, got {last_stride!r}")
    builder = _BACKBONES[name]
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(k for k in kw if k not in accepted and not takes_any)
    if unknown:
        raise ConfigError(f"backbone {name!r} does not take option(s) {', '.join(unknown)}")
    model = builder(norm=norm, last_stride=last_stride, **kw)
    if pretrained:
        from reidflow.models.pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model
