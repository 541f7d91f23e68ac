"""Drawn domain styles: inside the documented ranges, a pure function of (seed, i), valid domains."""

from __future__ import annotations

import pytest

from reidflow.data.synth.style_draw import DrawnDomains, StyleDistribution, draw_domains
from reidflow.errors import ConfigError
from reidflow.stages.synth import SynthConfig, resolve_domains


def test_drawn_styles_stay_in_their_ranges_and_validate_as_domains() -> None:
    cfg = DrawnDomains(count=25, seed=11, overrides={"identities": 20})
    entries = draw_domains(cfg)
    dist = cfg.distribution
    specs = resolve_domains(SynthConfig(domains=entries))
    assert [s.name for s in specs] == cfg.names()
    for spec in specs:
        st = spec.style
        assert all(dist.cast.low <= g <= dist.cast.high for g in st.gain)
        assert dist.brightness.low <= st.brightness <= dist.brightness.high
        assert dist.contrast.low <= st.contrast <= dist.contrast.high
        assert dist.saturation.low <= st.saturation <= dist.saturation.high
        assert dist.noise_std.low <= st.noise_std <= dist.noise_std.high
        assert dist.jpeg_quality.low <= st.jpeg_quality <= dist.jpeg_quality.high
        assert st.background.texture in dist.textures
        assert dist.palette_size[0] <= len(st.background.palette) <= dist.palette_size[1]
        assert spec.identities == 20 and spec.cameras == 6  # template target_city + overrides
    # wide: the draws really spread over the ranges
    saturations = [s.style.saturation for s in specs]
    assert min(saturations) < 0.5 and max(saturations) > 1.1
    assert len({s.style.background.texture for s in specs}) >= 4


def test_domain_i_depends_only_on_seed_and_i() -> None:
    three = draw_domains(DrawnDomains(count=3, seed=1))
    five = draw_domains(DrawnDomains(count=5, seed=1))
    assert five[:3] == three
    assert draw_domains(DrawnDomains(count=3, seed=2))[0] != three[0]


def test_a_narrowed_distribution_is_respected_and_bad_ranges_are_rejected() -> None:
    grey = DrawnDomains(count=4, distribution={"saturation": {"low": 0.0, "high": 0.1}, "textures": ["flat"]})
    for entry in draw_domains(grey):
        assert entry["overrides"]["style.saturation"] <= 0.1
        assert entry["overrides"]["style.background.texture"] == "flat"
    with pytest.raises(ValueError, match="low=2.0 must be <= high=1.0"):
        StyleDistribution(contrast={"low": 2.0, "high": 1.0})
    with pytest.raises(ValueError, match="textures"):
        StyleDistribution(textures=["marble"])
    with pytest.raises(ConfigError, match="unknown"):
        resolve_domains(SynthConfig(domains=draw_domains(DrawnDomains(count=1, overrides={"bogus": 1}))))
