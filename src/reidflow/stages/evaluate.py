"""Stage ``evaluate``: models (one or an ensemble) on query/gallery sets -> metrics + report."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from reidflow.config import StrictModel, params_digest
from reidflow.data.index import ShardIndex
from reidflow.data.opener import LocalOpener
from reidflow.errors import ConfigError, DataError
from reidflow.eval.ensemble import concat_features, sq_euclidean
from reidflow.eval.features import Features, extract_with_meta
from reidflow.eval.protocols import Split, average_over_targets, evaluate_splits, multi_split
from reidflow.eval.report import ReportSection, write_report
from reidflow.eval.scoring import RerankParams, headline, score_variants
from reidflow.models.artifact import load_model_artifact
from reidflow.store.artifacts import InputArtifact, open_input, write_artifact
from reidflow.store.lineage import RunContext

log = logging.getLogger(__name__)


class RerankConfig(StrictModel):
    enabled: bool = True
    k1: int = Field(20, ge=1)
    k2: int = Field(6, ge=1)
    lambda_value: float = Field(0.3, ge=0, le=1)


class CameraConfig(StrictModel):
    enabled: bool = False
    lambda_value: float = Field(0.1, ge=0)


class ReportConfig(StrictModel):
    retrieval_queries: int = Field(8, ge=0)
    topk: int = Field(10, ge=1)
    embedding: Literal["tsne", "pca", "none"] = "tsne"
    embedding_max_points: int = Field(1500, ge=10)


class EvaluateConfig(StrictModel):
    seed: int = 0
    device: str = "auto"
    batch_size: int = Field(128, ge=1)
    num_workers: int = Field(0, ge=0)
    flip: bool = True
    max_rank: int = Field(50, ge=1)
    ensemble: bool = True
    ensemble_weights: list[float] | None = None
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    save_features: bool = False
    protocols: dict[str, Literal["standard", "viper", "prid", "grid", "ilids"]] = Field(
        default_factory=dict,
        description="dataset name -> protocol; small DG targets use the seeded multi-split protocols",
    )
    num_splits: int = Field(10, ge=1)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def dataset_dirs(art: InputArtifact) -> list[Path]:
    """Dataset folders (with index.parquet) inside a shard artifact."""
    dirs = sorted(p.parent for p in art.path.glob("*/index.parquet"))
    if not dirs:
        raise DataError(f"input {art.name!r}: {art.uri} holds no dataset (expected <dataset>/index.parquet)")
    return dirs


def run(
    cfg: EvaluateConfig,
    models: list[str],
    eval_sets: list[str],
    output: str | Path,
    ctx: RunContext | None = None,
    camera_model: str | None = None,
    observer: Any = None,
) -> Path:
    """Evaluate every model and (with several) their ensemble on every query/gallery dataset.

    ``camera_model``: a model artifact trained with ``labels: camera`` (``reidflow pretrain
    --section camera``); its features give d_cam for the camera-similarity correction.
    ``observer``: a :class:`reidflow.obs.metrics.StageMetrics` receiving mAP/rank-1 per model.
    """
    if not models:
        raise ConfigError("evaluate: expected at least one --input model=URI")
    if not eval_sets:
        raise ConfigError("evaluate: expected at least one --input eval=URI (shards with query/gallery)")
    if cfg.camera.enabled and not camera_model:
        raise ConfigError(
            "evaluate.camera.enabled needs --input camera=URI: a camera model artifact "
            "(`reidflow pretrain --section camera` on the target's unlabelled train split)"
        )
    device = _device(cfg.device)
    model_inputs = [open_input(f"model{i}", uri) for i, uri in enumerate(models)]
    camera_input = open_input("camera", camera_model) if cfg.camera.enabled and camera_model else None
    camera = load_model_artifact(camera_input.path, device) if camera_input else None
    set_inputs = [open_input(f"eval{i}", uri) for i, uri in enumerate(eval_sets)]
    _check_unique_datasets(set_inputs)
    loaded = [(_model_name(m, i), *load_model_artifact(m.path, device)) for i, m in enumerate(model_inputs)]
    names = [n for n, _, _ in loaded]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    resolved = cfg.model_dump()
    rerank = (
        RerankParams(cfg.rerank.k1, cfg.rerank.k2, cfg.rerank.lambda_value) if cfg.rerank.enabled else None
    )
    with write_artifact(
        output,
        kind="evaluation",
        stage="evaluate",
        params=resolved,
        params_digest=params_digest(resolved),
        seed=cfg.seed,
        inputs=[*model_inputs, *set_inputs, *([camera_input] if camera_input else [])],
        ctx=ctx,
    ) as art:
        art.device = device
        (art.path / "figures").mkdir()
        (art.path / "plots").mkdir()
        results: dict[str, Any] = {}
        sections: list[ReportSection] = []
        embed_feats: list[Features] = []
        for set_input in set_inputs:
            for ddir in dataset_dirs(set_input):
                index = ShardIndex.load(ddir)
                if not {"query", "gallery"} <= set(index.splits):
                    log.info("skipping %s: no query/gallery split", ddir)
                    continue
                qg = index.filter(split=["query", "gallery"])
                target = ddir.name
                per_model = {}
                options = {
                    "batch_size": cfg.batch_size,
                    "flip": cfg.flip,
                    "device": device,
                    "num_workers": cfg.num_workers,
                }
                for name, (_, model, meta) in zip(names, loaded, strict=True):
                    per_model[name] = extract_with_meta(model, meta, qg, **options)
                if cfg.ensemble and len(per_model) > 1:
                    first = next(iter(per_model.values()))
                    stacked = concat_features([f.features for f in per_model.values()], cfg.ensemble_weights)
                    per_model["ensemble"] = Features(
                        stacked, first.pids, first.camids, first.domains, first.keys
                    )
                cam_feats = None
                if camera is not None and _camera_covers(camera[1], qg):
                    cam_feats = extract_with_meta(*camera, qg, **options)
                protocol = cfg.protocols.get(target, "standard")
                if protocol == "standard":
                    target_result, section, best = _score_target(
                        target, qg, per_model, cfg, rerank, art.path, cam_feats
                    )
                else:
                    target_result, section, best = _score_multi_split(
                        target, qg, per_model, protocol, cfg, art.path
                    )
                if observer is not None:
                    for mname, mres in target_result["models"].items():
                        final_v = mres["variants"][_final_variant(mres["variants"])]
                        observer.observe_eval(target, mname, final_v["mAP"], final_v["rank1"])
                results[target] = target_result
                sections.append(section)
                embed_feats.append(best)
                if cfg.save_features:
                    np.savez_compressed(
                        art.path / f"features_{target}.npz",
                        **{n: f.features for n, f in per_model.items()},
                        keys=np.asarray(qg.keys),
                    )
        if not results:
            raise DataError("evaluate: none of the eval inputs has a query and a gallery split")
        summary = {
            t: {m: r["variants"][_final_variant(r["variants"])] for m, r in res["models"].items()}
            for t, res in results.items()
        }
        art.metrics = {"summary": summary, "targets": results}
        split_targets = {t: r for t, r in results.items() if r.get("protocol", "standard") != "standard"}
        if len(split_targets) > 1:  # the DG benchmark number: mean over the small targets, per model
            models_in_all = set.intersection(*(set(r["models"]) for r in split_targets.values()))
            art.metrics["average_over_targets"] = {
                m: average_over_targets(
                    {t: r["models"][m]["variants"]["plain"] for t, r in split_targets.items()}
                )["mean"]
                for m in sorted(models_in_all)
            }
        sections.insert(0, _summary_section(summary))
        if cfg.report.embedding != "none":
            sections.append(_embedding_section(embed_feats, cfg, art.path))
        write_report(
            art.path,
            "reidflow evaluation report",
            f"Models: {', '.join(names)}. Datasets: {', '.join(results)}. "
            "Values in %; `plain` = Euclidean distance on L2-normalized (flip-averaged) features, "
            "`rerank` = k-reciprocal re-ranking "
            f"(k1={cfg.rerank.k1}, k2={cfg.rerank.k2}, λ={cfg.rerank.lambda_value}).",
            sections,
        )
    return Path(str(output))


def _check_unique_datasets(set_inputs: list[InputArtifact]) -> None:
    """Results are keyed by dataset name: two evaluation sets holding the same name would collide."""
    seen: dict[str, str] = {}
    for art in set_inputs:
        for ddir in dataset_dirs(art):
            if ddir.name in seen:
                raise ConfigError(
                    f"evaluate: dataset {ddir.name!r} is in two evaluation inputs ({seen[ddir.name]} and "
                    f"{art.uri}); results are keyed by dataset name, so give each set a distinct name"
                )
            seen[ddir.name] = art.uri


def _camera_covers(meta: dict[str, Any], index: ShardIndex) -> bool:
    """A camera model only corrects datasets whose cameras it was trained on."""
    known = {key.split("/c")[0] for key in (meta.get("label_map") or {})}
    return set(index.domain_names) <= known


def _model_name(art: InputArtifact, i: int) -> str:
    meta = json.loads((art.path / "model.json").read_text()) if (art.path / "model.json").is_file() else {}
    return str(meta.get("name") or meta.get("model", {}).get("backbone") or f"model{i}")


def _final_variant(variants: dict[str, Any]) -> str:
    """The pipeline's final variant: the most post-processing that ran (not the highest score)."""
    for name in ("camera+rerank", "rerank", "camera", "plain"):
        if name in variants:
            return name
    raise DataError("no evaluation variant")  # pragma: no cover


def _score_target(
    target: str,
    qg: ShardIndex,
    per_model: dict[str, Features],
    cfg: EvaluateConfig,
    rerank: RerankParams | None,
    out: Path,
    cam_feats: Features | None = None,
) -> tuple[dict[str, Any], ReportSection, Features]:
    is_q = np.asarray(qg.splits) == "query"
    q_rows, g_rows = np.flatnonzero(is_q), np.flatnonzero(~is_q)
    cam = (cam_feats.features[q_rows], cam_feats.features[g_rows]) if cam_feats is not None else None
    models: dict[str, Any] = {}
    rows = []
    curves = {}
    dist_for_grid = None
    for name, feats in per_model.items():
        q, g = feats.take(q_rows), feats.take(g_rows)
        variants, dists = score_variants(
            q.features,
            g.features,
            q.pids,
            g.pids,
            q.camids,
            g.camids,
            max_rank=cfg.max_rank,
            rerank=rerank,
            cam=cam,
            camera_lambda=cfg.camera.lambda_value,
        )
        models[name] = {"variants": {v: headline(r) for v, r in variants.items()}}
        for v, r in variants.items():
            rows.append({"model": name, "variant": v, **{k: val for k, val in headline(r).items()}})
            curves[f"{name} {v}"] = np.asarray(r["cmc"])
            _write_cmc_csv(out / "plots" / f"cmc_{target}_{name}_{v}.csv".replace("+", "_"), r["cmc"])
        dist_for_grid = (name, dists[_final_variant(variants)], q, g)
    from reidflow.eval.plots import cmc_curves, retrieval_grid

    section = ReportSection(f"{target}", table=rows)
    section.images.append(
        (
            f"CMC curves on {target}",
            cmc_curves(
                curves,
                f"CMC - {target}",
                out / "figures" / f"cmc_{target}.png",
                max_rank=min(20, len(g_rows)),
            ),
        )
    )
    if cfg.report.retrieval_queries and dist_for_grid is not None:
        name, dist, q, g = dist_for_grid
        grid = _retrieval_rows(qg, q_rows, g_rows, dist, q, g, cfg)
        caption = (
            f"Retrieval on {target} with {name} (query in blue, then top-{cfg.report.topk}: "
            "green = same identity, red = other)"
        )
        section.images.append((caption, retrieval_grid(grid, out / "figures" / f"retrieval_{target}.png")))
    best = per_model["ensemble"] if "ensemble" in per_model else next(iter(per_model.values()))
    return {"models": models, "num_query": len(q_rows), "num_gallery": len(g_rows)}, section, best


def protocol_splits(qg: ShardIndex, protocol: str, num_splits: int, seed: int) -> list[Split]:
    """The seeded random splits of ``protocol`` over a query/gallery index (grid: the split is the side)."""
    arrays: dict[str, Any] = {"pids": qg.pids, "camids": qg.camids}
    if protocol == "grid":
        arrays["sides"] = np.where(np.asarray(qg.splits) == "query", 0, 1)
    return multi_split(arrays, protocol, num_splits, seed)


def split_records(qg: ShardIndex, splits: list[Split]) -> list[dict[str, Any]]:
    """Each split with the sample keys of its query and gallery images (so it can be replayed)."""
    return [
        {
            **s.to_dict(),
            "query_keys": [qg.keys[i] for i in s.query],
            "gallery_keys": [qg.keys[i] for i in s.gallery],
        }
        for s in splits
    ]


def score_splits(features: np.ndarray, splits: list[Split], max_rank: int) -> dict[str, Any]:
    """Mean/std over ``splits`` of squared-Euclidean retrieval on ``features`` (rows of the index)."""
    return evaluate_splits(
        lambda qi, gi: sq_euclidean(features[qi], features[gi]),
        splits,
        max_rank=min(max_rank, min(len(s.gallery) for s in splits)),
    )


def _score_multi_split(
    target: str, qg: ShardIndex, per_model: dict[str, Features], protocol: str, cfg: EvaluateConfig, out: Path
) -> tuple[dict[str, Any], ReportSection, Features]:
    """Mean ± std over seeded, recorded random splits (VIPeR/PRID/GRID/iLIDS protocols)."""
    first = next(iter(per_model.values()))
    splits = protocol_splits(qg, protocol, cfg.num_splits, cfg.seed)
    (out / "splits").mkdir(exist_ok=True)
    (out / "splits" / f"{target}.json").write_text(json.dumps(split_records(qg, splits)) + "\n")
    models: dict[str, Any] = {}
    rows = []
    for name, feats in per_model.items():
        res = score_splits(feats.features, splits, cfg.max_rank)
        mean, std = res["mean"], res["std"]
        pick = {
            "mAP": mean["mAP"],
            "rank1": mean["rank-1"],
            "rank5": mean.get("rank-5", float("nan")),
            "rank10": mean.get("rank-10", float("nan")),
            "mINP": mean["mINP"],
        }
        models[name] = {
            "variants": {"plain": pick},
            "std": {k: std[k] for k in ("mAP", "rank-1") if k in std},
        }
        rows.append(
            {
                "model": name,
                "mAP": mean["mAP"],
                "mAP std": std["mAP"],
                "rank1": mean["rank-1"],
                "rank1 std": std["rank-1"],
                "mINP": mean["mINP"],
            }
        )
    section = ReportSection(f"{target} ({protocol} protocol, {len(splits)} splits, mean and std)", table=rows)
    section.notes.append(f"Splits are recorded in `splits/{target}.json` (seed {cfg.seed}).")
    best = per_model.get("ensemble", first)
    result = {
        "protocol": protocol,
        "num_splits": len(splits),
        "models": models,
        "num_query": len(splits[0].query),
        "num_gallery": len(splits[0].gallery),
    }
    return result, section, best


def _retrieval_rows(
    qg: ShardIndex,
    q_rows: np.ndarray,
    g_rows: np.ndarray,
    dist: np.ndarray,
    q: Features,
    g: Features,
    cfg: EvaluateConfig,
) -> list[tuple[bytes, list[tuple[bytes, bool]]]]:
    opener = LocalOpener(qg.root)
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(q_rows), size=min(cfg.report.retrieval_queries, len(q_rows)), replace=False)
    rows = []
    for qi in sorted(picks):
        keep = ~((g.pids == q.pids[qi]) & (g.camids == q.camids[qi]))  # same protocol as the metrics
        order = [j for j in np.argsort(dist[qi], kind="stable") if keep[j]][: cfg.report.topk]
        ranked = [(qg.read_image_bytes(int(g_rows[j]), opener), bool(g.pids[j] == q.pids[qi])) for j in order]
        rows.append((qg.read_image_bytes(int(q_rows[qi]), opener), ranked))
    return rows


def _write_cmc_csv(path: Path, cmc: Any) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "cmc"])
        for k, v in enumerate(np.asarray(cmc)[:50], start=1):
            writer.writerow([k, f"{float(v):.6f}"])


def _summary_section(summary: dict[str, dict[str, dict[str, float]]]) -> ReportSection:
    rows = [{"dataset": t, "model": m, **vals} for t, per in summary.items() for m, vals in per.items()]
    return ReportSection(
        "Summary (final variant per model: camera+rerank > rerank > camera > plain, whichever ran)",
        table=rows,
    )


def _embedding_section(parts: list[Features], cfg: EvaluateConfig, out: Path) -> ReportSection:
    from reidflow.eval.plots import embedding_scatter

    feats = np.concatenate([p.features for p in parts])
    domains = np.concatenate([p.domains for p in parts])
    pids = np.concatenate([np.char.add(p.domains.astype(str), p.pids.astype(str)) for p in parts])
    rng = np.random.default_rng(cfg.seed)
    if len(feats) > cfg.report.embedding_max_points:
        keep = np.sort(rng.choice(len(feats), cfg.report.embedding_max_points, replace=False))
        feats, domains, pids = feats[keep], domains[keep], pids[keep]
    coords = _embed_2d(feats, cfg.report.embedding, cfg.seed)
    path = embedding_scatter(
        coords,
        list(domains),
        pids,
        out / "figures" / "embedding.png",
        f"{cfg.report.embedding.upper()} of query+gallery features",
    )
    return ReportSection(
        "Feature embedding", images=[("2-D embedding coloured by domain and by identity", path)]
    )


def _embed_2d(feats: np.ndarray, method: str, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    reduced = PCA(n_components=min(50, feats.shape[1], len(feats)), random_state=seed).fit_transform(feats)
    if method == "pca" or len(feats) < 10:
        return reduced[:, :2]
    from sklearn.manifold import TSNE

    return TSNE(
        n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(feats) - 1) / 3)
    ).fit_transform(reduced)
