"""The SDA study's table: mean ± std over seeds per target and averaged, the claim check, the Markdown."""

from __future__ import annotations

import pytest

from reidflow.errors import ConfigError
from reidflow.stages import sda_study
from tests.helpers import repo_params


def study_config(**changes) -> sda_study.SDAStudyConfig:
    section = {**repo_params()["sda_study"], **changes}
    return sda_study.SDAStudyConfig.model_validate(section)


def fake_runs(cfg: sda_study.SDAStudyConfig, target_map: dict[tuple[str, str, int], float]) -> dict:
    runs = {}
    for target in cfg.all_targets:
        for seed in cfg.seeds:
            scores = {
                row: {
                    "domain_accuracy": 0.9,
                    "source_mAP": 0.5,
                    "colour_distance": 0.1,
                    "target_rank-1": 0.4,
                    "target_mAP": target_map[(row, target, seed)],
                }
                for row in sda_study.ROWS
            }
            runs[f"{target}-seed{seed}"] = {"target": target, "seed": seed, "scores": scores}
    return runs


def test_defaults_have_two_target_styles_three_seeds_and_both_rows() -> None:
    cfg = study_config()
    assert len(cfg.all_targets) >= 2 and len(cfg.seeds) >= 3
    configs = sda_study.stage_configs(cfg, seed=2)
    assert configs["SDA"].loss.relation_weight > 0 and configs["CycleGAN"].loss.relation_weight == 0
    assert configs["pretrain"].target_bn.enabled and not configs["pretrain"].eval.enabled
    assert configs["pretrain"].seed == configs["SDA"].engine.seed == 2


def test_bad_sections_are_named() -> None:
    with pytest.raises(ValueError, match="sources and targets overlap"):
        study_config(sources=["mall_warm", "target_city"])
    with pytest.raises(ValueError, match="relation weight > 0"):
        study_config(sda={**repo_params()["sda_study"]["sda"], "loss": {"relation_weight": 0.0}})
    with pytest.raises(ConfigError, match=r"sda_study.pretrain"):
        study_config(pretrain={"optimizer": {"lr": -1}})


def test_summary_averages_per_seed_then_takes_mean_and_std() -> None:
    cfg = study_config(seeds=[0, 1])
    [a, b] = cfg.all_targets
    values = {}
    for row, base in (("raw", 0.10), ("CycleGAN", 0.20), ("SDA", 0.30)):
        values[(row, a, 0)], values[(row, a, 1)] = base, base + 0.02
        values[(row, b, 0)], values[(row, b, 1)] = base + 0.04, base + 0.02
    table = sda_study.summarize(cfg, fake_runs(cfg, values))
    sda = table["SDA"]
    assert sda["targets"][a]["target_mAP"] == pytest.approx({"mean": 31.0, "std": 1.0})
    assert sda["average"]["target_mAP"] == pytest.approx({"mean": 32.0, "std": 0.0})  # seed averages: 32, 32
    assert sda["average"]["colour_distance"] == pytest.approx({"mean": 0.1, "std": 0.0})  # not in %
    claims = sda_study.claim_check(cfg, table)
    assert claims["average"]["raw"] == {"gap": 20.0, "std": 0.0, "beats": True}
    assert claims[a]["CycleGAN"]["beats"] is True
    values[("SDA", a, 0)] = 0.05  # a noisy SDA on one target: its gap no longer exceeds the seed std
    noisy = sda_study.claim_check(cfg, sda_study.summarize(cfg, fake_runs(cfg, values)))
    assert noisy[a]["CycleGAN"]["beats"] is False
    markdown = sda_study.results_markdown(
        cfg, table, claims, "reidflow sda-study", {"plot": "p.png", f"samples_{a}": "s.png"}
    )
    rows = [line for line in markdown.splitlines() if line.startswith("| SDA |")]
    assert len(rows) == 2 and rows[1].endswith("| 32.0 ± 0.0 |")  # last column: average target mAP
    assert "vs raw +20.00 (seed std 0.00, beats)" in markdown and "](s.png)" in markdown
