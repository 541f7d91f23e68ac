"""Stage ``synth``: procedural multi-domain pedestrians in the Market-1501 layout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from reidflow.config import StrictModel, params_digest
from reidflow.errors import ConfigError
from reidflow.obs.progress import Progress
from reidflow.store.artifacts import is_current, write_artifact
from reidflow.store.lineage import RunContext

log = logging.getLogger(__name__)


class SynthDomain(StrictModel):
    preset: str = Field(description="preset name or path to a domain-style YAML file")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="DomainSpec overrides by dotted key, e.g. style.noise_std"
    )


class SynthConfig(StrictModel):
    seed: int = 0
    workers: int = Field(2, ge=1)
    domains: list[SynthDomain] = Field(min_length=1)


def resolve_domains(cfg: SynthConfig) -> list[Any]:
    """Presets (or spec files) with their dotted-key overrides applied and validated."""
    from reidflow.data.synth.spec import override_spec, resolve_spec

    specs = []
    for i, dom in enumerate(cfg.domains):
        spec = resolve_spec(dom.preset)
        if dom.overrides:
            try:
                spec = override_spec(spec, dom.overrides)
            except ConfigError as exc:
                raise ConfigError(f"synth.domains.{i}.overrides: {exc}") from None
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"synth.domains: domain names must be unique, got {names}")
    return specs


def with_drawn(cfg: SynthConfig, drawn: Any) -> SynthConfig:
    """``cfg`` plus the domains of a :class:`reidflow.data.synth.style_draw.DrawnDomains` (studies' unseen
    target styles drawn at random)."""
    from reidflow.data.synth.style_draw import draw_domains

    if not drawn.count:
        return cfg
    extra = [SynthDomain.model_validate(entry) for entry in draw_domains(drawn)]
    return cfg.model_copy(update={"domains": [*cfg.domains, *extra]})


def run(cfg: SynthConfig, output: str | Path, ctx: RunContext | None = None, reuse: bool = False) -> Path:
    """Generate every configured domain under ``output/<domain>/`` (one artifact).

    ``reuse``: keep an existing local artifact made from the same resolved params and the same
    generator version instead of regenerating it (generation is deterministic, so the bytes would be
    identical); ``lineage verify`` still checks every file.
    """
    from reidflow.data.synth import generate_domain
    from reidflow.data.synth.writer import GENERATOR_VERSION

    specs = resolve_domains(cfg)
    resolved = cfg.model_dump()
    resolved["resolved_specs"] = [s.model_dump(mode="json") for s in specs]
    resolved["generator_version"] = GENERATOR_VERSION
    digest = params_digest(resolved)
    if reuse and is_current(output, digest):
        log.info("synth: %s is up to date (params %s); reusing it", output, digest[:19])
        return Path(str(output))
    with write_artifact(
        output,
        kind="raw-dataset",
        stage="synth",
        params=resolved,
        params_digest=digest,
        seed=cfg.seed,
        inputs=[],
        ctx=ctx,
    ) as art:
        for spec in specs:
            with Progress(None, f"synth {spec.name}", unit="img") as bar:
                generate_domain(spec, art.path, seed=cfg.seed, workers=cfg.workers, progress=bar.callback())
        art.metrics = {"domains": [s.name for s in specs]}
    return Path(str(output))
