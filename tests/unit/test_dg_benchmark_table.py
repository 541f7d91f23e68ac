"""The DG benchmark's aggregation: mean ± std over seeds, the MetaBIN-vs-rivals check, the table."""

from __future__ import annotations

import pytest

from reidflow.config import validate_as
from reidflow.errors import ConfigError
from reidflow.stages.dg_benchmark import (
    DGBenchmarkConfig,
    ablation_effects,
    claim_check,
    markdown_table,
    summarize,
    variant_config,
)


def config(**changes) -> DGBenchmarkConfig:
    data = {
        "synth": {
            "domains": [{"preset": p} for p in ("mall_warm", "night_station", "foggy_campus", "target_city")]
        },
        "sources": ["mall_warm", "night_station", "foggy_campus"],
        "targets": ["target_city"],
        "seeds": [0, 1],
        "recipe": {"model": {"backbone": "osnet_x0_25"}},
        "variants": {
            "BN": {"stage": "pretrain", "overrides": {"model": {"norm": "bn"}}},
            "MetaBIN": {"stage": "metabin", "overrides": {"model": {"norm": "metabin"}}},
        },
        **changes,
    }
    return validate_as(DGBenchmarkConfig, data, "dg_benchmark")


def run_result(variant: str, seed: int, r1: float, mAP: float) -> dict:
    metrics = {"rank-1": r1, "mAP": mAP}
    return {
        "variant": variant,
        "seed": seed,
        "targets": {"target_city": {"mean": metrics}},
        "average": {"hand-written": metrics},
    }


def test_summary_is_mean_and_population_std_over_seeds_in_percent():
    runs = {
        "BN-0": run_result("BN", 0, 0.20, 0.30),
        "BN-1": run_result("BN", 1, 0.30, 0.40),
        "MetaBIN-0": run_result("MetaBIN", 0, 0.50, 0.60),
        "MetaBIN-1": run_result("MetaBIN", 1, 0.50, 0.62),
    }
    table = summarize(config(), runs)
    assert table["BN"]["groups"]["hand-written"]["mAP"] == pytest.approx({"mean": 35.0, "std": 5.0})
    assert table["MetaBIN"]["groups"]["hand-written"]["rank-1"] == pytest.approx({"mean": 50.0, "std": 0.0})
    assert table["BN"]["targets"]["target_city"]["rank-1"]["mean"] == pytest.approx(25.0)
    checks = claim_check(table)
    assert checks["hand-written"]["BN"]["mAP"] == {"gap": 26.0, "std": 5.0, "beats": True}
    text = markdown_table(config(), table)
    assert "| BN | 25.0 ± 5.0 | 35.0 ± 5.0 |" in text
    runs["MetaBIN-1"] = run_result("MetaBIN", 1, 0.10, 0.20)  # now within the noise
    assert claim_check(summarize(config(), runs))["hand-written"]["BN"]["mAP"]["beats"] is False


def test_drawn_targets_join_the_synth_domains_and_get_their_own_average():
    cfg = config(drawn={"count": 2, "seed": 4, "overrides": {"identities": 30}})
    assert cfg.all_targets == ["target_city", "drawn_00", "drawn_01"]
    assert cfg.target_groups() == {"hand-written": ["target_city"], "drawn": ["drawn_00", "drawn_01"]}
    names = [d.overrides.get("name", d.preset) for d in cfg.effective_synth().domains]
    assert names[-2:] == ["drawn_00", "drawn_01"] and len(names) == 6
    # drawn styles are a pure function of (seed, i): a second draw and a longer list agree
    again = config(drawn={"count": 3, "seed": 4, "overrides": {"identities": 30}})
    assert again.effective_synth().domains[4:6] == cfg.effective_synth().domains[4:6]
    other = config(drawn={"count": 2, "seed": 5, "overrides": {"identities": 30}})
    assert other.effective_synth().domains[4] != cfg.effective_synth().domains[4]


def test_ablation_rows_report_what_the_reference_setting_adds():
    variants = {
        "BN": {"stage": "pretrain", "overrides": {"model": {"norm": "bn"}}},
        "MetaBIN": {"stage": "metabin", "overrides": {"model": {"norm": "metabin"}}},
        "MetaBIN-diffclamp": {
            "stage": "metabin",
            "ablates": "MetaBIN",
            "change": "straight-through clamp",
            "overrides": {"model": {"norm": "metabin"}, "meta": {"virtual_clamp": "differentiable"}},
        },
    }
    cfg = config(variants=variants)
    assert cfg.ranked_variants() == ["BN", "MetaBIN"]
    runs = {
        "MetaBIN-0": run_result("MetaBIN", 0, 0.50, 0.60),
        "MetaBIN-diffclamp-0": run_result("MetaBIN-diffclamp", 0, 0.40, 0.45),
        "BN-0": run_result("BN", 0, 0.2, 0.3),
    }
    effects = ablation_effects(cfg, summarize(cfg, runs))
    assert effects["MetaBIN-diffclamp"]["groups"]["hand-written"]["mAP"]["gain"] == pytest.approx(15.0)
    with pytest.raises(ConfigError, match="ablates"):
        config(variants={**variants, "X": {"stage": "pretrain", "ablates": "nothing"}})
    with pytest.raises(ConfigError, match="used in paths"):
        config(variants={**variants, "a b": {"stage": "pretrain"}})


def test_variant_config_merges_recipe_overrides_and_seed():
    cfg = config()
    merged = variant_config(cfg, "MetaBIN", seed=7)
    assert merged.seed == 7 and merged.model == {"backbone": "osnet_x0_25", "norm": "metabin"}
    assert merged.eval.enabled is False and merged.name == "MetaBIN"


def test_invalid_studies_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="targets must be unseen"):
        config(targets=["mall_warm"])
    with pytest.raises(ConfigError, match="not synth domains"):
        config(targets=["nowhere"])
    with pytest.raises(ConfigError, match="variants.MetaBIN"):
        config(variants={"MetaBIN": {"stage": "metabin", "overrides": {"model": {"norm": "in"}}}})
