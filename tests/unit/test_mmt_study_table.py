"""The MMT study's configs and table: two pretrain seeds per study seed, one mmt config per row, mean ±
std over seeds per target and averaged, the claim check, the Markdown and the purity curves."""

from __future__ import annotations

import pytest

from reidflow.errors import ConfigError
from reidflow.stages import mmt_study
from reidflow.stages.mmt import export_targets
from tests.helpers import repo_params


def study_config(**changes) -> mmt_study.MMTStudyConfig:
    section = {**repo_params()["mmt_study"], **changes}
    return mmt_study.MMTStudyConfig.model_validate(section)


def fake_runs(cfg: mmt_study.MMTStudyConfig, target_map: dict[tuple[str, str, int], float]) -> dict:
    runs = {}
    for target in cfg.all_targets:
        for seed in cfg.seeds:
            scores = {
                row: {"target_rank-1": 0.5, "target_mAP": target_map[(row, target, seed)]} for row in cfg.rows
            }
            history = [{"epoch": e, "purity": 0.5 + 0.1 * e + 0.01 * seed} for e in range(3)]
            runs[f"{target}-seed{seed}"] = {
                "target": target,
                "seed": seed,
                "scores": scores,
                "pseudo_labels": {v: history for v in cfg.variants},
            }
    return runs


def test_defaults_have_two_target_styles_three_seeds_and_the_three_rows() -> None:
    cfg = study_config()
    assert len(cfg.all_targets) >= 2 and len(cfg.seeds) >= 3
    assert cfg.rows[:3] == ["direct transfer", "MMT", "MMT+"]
    configs = mmt_study.stage_configs(cfg, seed=2)
    assert (configs["net1"].seed, configs["net2"].seed) == (4, 5)
    assert configs["net1"].target_bn.enabled and not configs["net1"].eval.enabled
    assert configs["MMT"].method.mode == "mmt" and not configs["MMT"].method.use_source
    assert configs["MMT+"].method.dsbn and configs["MMT+"].method.moco_weight > 0
    assert configs["MMT+"].seed == 2 and configs["MMT+"].export == "mean1"


def test_bad_sections_are_named() -> None:
    with pytest.raises(ValueError, match="not synth domains"):
        study_config(targets=["nowhere"])
    with pytest.raises(ValueError, match="overlap"):
        study_config(targets=["mall_warm"])
    with pytest.raises(ValueError, match="pretrained nets' row"):
        study_config(variants={"direct transfer": {}})
    with pytest.raises(ConfigError, match=r"mmt_study.variants.MMT\+"):
        study_config(variants={"MMT+": {"method": {"mode": "mmt++"}}})


def test_table_claims_markdown_and_curves() -> None:
    cfg = study_config(seeds=[0, 1, 2])
    base = {"direct transfer": 0.05, "MMT": 0.10, "MMT+": 0.20, "MMT+ camera-centred": 0.20}
    target_map = {
        (row, t, s): base[row] + 0.01 * s + (0.02 if t == cfg.all_targets[0] else 0.0)
        for row in cfg.rows
        for t in cfg.all_targets
        for s in cfg.seeds
    }
    runs = fake_runs(cfg, target_map)
    table = mmt_study.summarize(cfg, runs)
    cell = table["MMT+"]["targets"][cfg.all_targets[1]]["target_mAP"]
    assert cell["mean"] == pytest.approx(21.0) and cell["std"] == pytest.approx(0.8165, abs=1e-3)
    assert table["MMT+"]["average"]["target_mAP"]["mean"] == pytest.approx(22.0)
    claims = mmt_study.claim_check(cfg, table)
    assert claims["average"]["MMT+ vs direct transfer"]["beats"] is True
    assert claims["average"]["MMT+ vs MMT"]["gap"] == pytest.approx(10.0)
    assert claims["average"]["MMT+ camera-centred vs MMT+"]["beats"] is False  # extra rows vs MMT+
    curves = mmt_study.purity_curves(cfg, runs)
    assert curves["MMT+"][cfg.all_targets[0]] == pytest.approx([51.0, 61.0, 71.0])
    md = mmt_study.results_markdown(
        cfg, table, claims, curves, "reidflow mmt-study", {"plot": "p.png", "purity": "q.png"}
    )
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.endswith("| target mAP % |")
    assert "| MMT+ | 23.0 ± 0.8 | 21.0 ± 0.8 | 50.0 ± 0.0 | 22.0 ± 0.8 |" in md
    assert "MMT+ vs MMT +10.00" in md and "(q.png)" in md


def test_export_targets() -> None:
    assert export_targets("mean2", "s3://b/m") == [("mean2", "s3://b/m")]
    assert export_targets("both", "s3://b/m/") == [("mean1", "s3://b/m/"), ("mean2", "s3://b/m-mean2")]
