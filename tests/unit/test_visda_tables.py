"""The VisDA chain's tables from scores: per-role statistics, the four ablations, the study's rows,
mean ± std over seeds and the claims (a gap counts only when larger than the seed std)."""

from __future__ import annotations

import pytest
import yaml

from reidflow.config import section
from reidflow.stages import visda, visda_study
from tests.helpers import REPO


def chain_scores(raw: float, sda: float, mmt: float, plus: float, ens: float) -> dict:
    models = []
    for backbone, shift in (("a", 0.0), ("b", 0.02)):
        for seed, noise in ((0, -0.01), (1, 0.01)):
            models.append({"role": "raw", "name": f"{backbone}-raw-{seed}", "backbone": backbone, "seed": seed,
                           "mAP": raw + shift + noise, "rank1": raw, "mINP": raw})  # fmt: skip
            models.append({"role": "sda", "name": f"{backbone}-sda-{seed}", "backbone": backbone, "seed": seed,
                           "mAP": sda + shift + noise, "rank1": sda, "mINP": sda})  # fmt: skip
        models.append({"role": "mmt", "name": f"{backbone}-mmt", "backbone": backbone, "seed": 0,
                       "mAP": mmt + shift, "rank1": mmt, "mINP": mmt})  # fmt: skip
        models.append({"role": "mmt_plus", "name": f"{backbone}-mmt-plus", "backbone": backbone, "seed": 0,
                       "mAP": plus + shift, "rank1": plus, "mINP": plus})  # fmt: skip
    steps = [{"step": s, "mAP": ens + i * 0.01, "rank1": ens, "mINP": ens}
             for i, s in enumerate(("no flip", "+ flip", "+ camera", "+ re-ranking"))]  # fmt: skip
    best = {"mAP": plus + 0.02, "rank1": plus, "mINP": plus}
    return {
        "target": "t",
        "num_query": 10,
        "num_gallery": 20,
        "models": models,
        "ensemble": {"of": "mmt_plus", "members": ["a-mmt-plus", "b-mmt-plus"], "steps": steps},
        "best_single": {"name": "b-mmt-plus", "backbone": "b", "plain": best, "post-processed": best},
    }


def test_role_stats_and_ablation_tables() -> None:
    scores = chain_scores(0.10, 0.12, 0.14, 0.16, 0.20)
    stats = visda.role_stats(scores, "raw")
    assert stats["a"] == pytest.approx({"mean": 10.0, "std": 1.0, "n": 2})
    assert stats["all"]["n"] == 4 and stats["all"]["mean"] == pytest.approx(11.0)
    tables = visda.ablation_tables(scores)
    assert list(tables) == ["raw vs SDA pretraining", "MMT vs MMT+", "singles vs ensemble", "post-processing"]
    first = tables["raw vs SDA pretraining"][0]
    assert first == {"backbone": "a", "raw mAP %": "10.0 ± 1.0", "SDA mAP %": "12.0 ± 1.0", "gap": "+2.0"}
    assert tables["MMT vs MMT+"][0]["MMT mAP %"] == "14.0"  # one run: no ± shown
    singles = tables["singles vs ensemble"]
    assert [r["model"] for r in singles][-2:] == ["best single (b-mmt-plus)", "ensemble of 2"]
    assert singles[-1]["mAP %"] == "21.0"  # the ensemble with flip: the singles' protocol
    assert [r["post-processing"] for r in tables["post-processing"]] == list(visda.STEPS)
    assert visda.step_scores(scores, "+ camera")["mAP"] == pytest.approx(0.22)


def study_config() -> visda_study.VisdaStudyConfig:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["visda_study"]["seeds"] = [0, 1, 2]
    return section(raw, "visda_study", visda_study.VisdaStudyConfig, source="params.yaml")


def test_study_rows_mean_std_and_claims() -> None:
    cfg = study_config()
    runs = {}
    for seed, jitter in zip(cfg.seeds, (-0.01, 0.0, 0.01), strict=True):
        for target in cfg.all_targets:
            chain = chain_scores(0.10 + jitter, 0.11 + jitter, 0.14, 0.16, 0.25 + jitter)
            runs[f"{target}-{seed}"] = {"target": target, "seed": seed, "chain": chain,
                                        "scores": visda_study.row_scores(chain)}  # fmt: skip
    table = visda_study.summarize(cfg, runs)
    assert list(table) == list(visda_study.ROWS)
    assert table["raw pretraining"]["average"]["target_mAP"]["mean"] == pytest.approx(11.0)
    assert table["raw pretraining"]["average"]["target_mAP"]["std"] == pytest.approx(0.8165, abs=1e-3)
    claims = visda_study.claim_check(cfg, table)
    average = claims["average"]
    assert average["ensemble vs best single (MMT+)"]["beats"] is True  # 26 vs 18
    assert average["SDA pretraining vs raw pretraining"]["beats"] is True  # +1.0 > std 0.82
    assert average["MMT+ vs MMT"]["beats"] is True  # +2.0, no seed noise
    per_backbone = visda_study.per_backbone(cfg.model_copy(update={"backbones": ["a", "b"]}), runs)
    assert per_backbone["a"]["raw pretraining"]["mean"] == pytest.approx(10.0)
    assert per_backbone["b"]["MMT+"] == pytest.approx({"mean": 18.0, "std": 0.0})
    md = visda_study.markdown_tables(
        cfg, table, {"a": {r: {"mean": 1.0, "std": 0.0} for r in visda_study.ROLE_ROWS.values()}}
    )
    assert md.splitlines()[0].endswith("target rank-1 % | target mAP % |")
    assert "| ensemble + camera + re-ranking |" in md


def test_noisy_gap_does_not_count() -> None:
    cfg = study_config()
    runs = {}
    for seed, jitter in zip(cfg.seeds, (-0.03, 0.0, 0.03), strict=True):
        for target in cfg.all_targets:
            chain = chain_scores(0.10 + jitter, 0.11 - jitter, 0.14, 0.16, 0.25)
            runs[f"{target}-{seed}"] = {"target": target, "seed": seed, "chain": chain,
                                        "scores": visda_study.row_scores(chain)}  # fmt: skip
    claims = visda_study.claim_check(cfg, visda_study.summarize(cfg, runs))
    assert claims["average"]["SDA pretraining vs raw pretraining"]["beats"] is False
