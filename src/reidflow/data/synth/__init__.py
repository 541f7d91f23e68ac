"""Procedural multi-domain pedestrian generator.

Identities (build, hair, clothes, carried items) survive a domain's style (colour cast, contrast,
blur, noise, JPEG, backgrounds) but are distorted by it, which is the shift that MetaBIN, SNR and SDA
are built for. Domains are YAML specs (:class:`DomainSpec`); several presets ship with the package.
Output is the Market-1501 folder layout, byte-identical for the same spec and seed.
"""

from reidflow.data.synth.plan import MARKET_NAME, SPLIT_FOLDERS
from reidflow.data.synth.spec import (
    DomainSpec,
    list_presets,
    load_preset,
    load_spec,
    override_spec,
    resolve_spec,
)
from reidflow.data.synth.stats import colour_stats, contact_sheet
from reidflow.data.synth.writer import CARD_NAME, generate, generate_domain

__all__ = [
    "CARD_NAME",
    "MARKET_NAME",
    "SPLIT_FOLDERS",
    "DomainSpec",
    "colour_stats",
    "contact_sheet",
    "generate",
    "generate_domain",
    "list_presets",
    "load_preset",
    "load_spec",
    "override_spec",
    "resolve_spec",
]
