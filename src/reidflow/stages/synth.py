"""Stage ``synth``: procedural multi-domain pedestrians in the Market-1501 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from reidflow.config import StrictModel, params_digest
from reidflow.errors import ConfigError
from reidflow.obs.progress import progress_callback
from reidflow.store.artifacts import write_artifact
from reidflow.store.lineage import RunContext


class SynthDomain(StrictModel):
    preset: str = Field(description="preset name or path to a domain-style YAML file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DomainSpec fields to override")


class SynthConfig(StrictModel):
    seed: int = 0
    workers: int = Field(2, ge=1)
    domains: list[SynthDomain] = Field(min_length=1)


def resolve_domains(cfg: SynthConfig) -> list[Any]:
    from reidflow.data.synth import resolve_spec

    specs = []
    for i, dom in enumerate(cfg.domains):
        spec = resolve_spec(dom.preset)
        if dom.overrides:
            unknown = sorted(set(dom.overrides) - set(type(spec).model_fields))
            if unknown:
                raise ConfigError(f"synth.domains.{i}.overrides: unknown DomainSpec field(s) {unknown}; "
                                  f"known: {sorted(type(spec).model_fields)}")
            spec = type(spec).model_validate({**spec.model_dump(), **dom.overrides})
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"synth.domains: domain names must be unique, got {names}")
    return specs


def run(cfg: SynthConfig, output: str | Path, ctx: RunContext | None = None) -> Path:
    """Generate every configured domain under ``output/<domain>/`` (one artifact)."""
    from reidflow.data.synth import generate_domain

    specs = resolve_domains(cfg)
    resolved = cfg.model_dump()
    resolved["resolved_specs"] = [s.model_dump() for s in specs]
    with write_artifact(output, kind="raw-dataset", stage="synth", params=resolved,
                        params_digest=params_digest(resolved), seed=cfg.seed, inputs=[], ctx=ctx) as art:
        for spec in specs:
            with progress_callback(f"synth {spec.name}") as progress:
                generate_domain(spec, art.path, seed=cfg.seed, workers=cfg.workers, progress=progress)
        art.metrics = {"domains": [s.name for s in specs]}
    return Path(str(output))
