"""Model artifacts: ``model.safetensors`` + ``model.json`` (everything needed to rebuild and feed it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from reidflow.errors import ArtifactError
from reidflow.models.reid_model import ModelConfig, ReIDModel, build_reid_model
from reidflow.store.scrub import scrub

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def save_model_artifact(
    directory: Path,
    model: nn.Module,
    config: ModelConfig,
    *,
    height: int,
    width: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights (safetensors, contiguous CPU copies) and the metadata that rebuilds the model.

    The metadata is scrubbed like lineage: a signed URL or credentials given as ``model.pretrained``
    never reach ``model.json``."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {
        "model": config.model_dump(mode="json"),
        "input": {"height": height, "width": width},
        "normalize": {"mean": list(mean), "std": list(std)},
        **(extra or {}),
    }
    (directory / META_FILE).write_text(json.dumps(scrub(meta), indent=2) + "\n")


def load_model_artifact(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[ReIDModel, dict[str, Any]]:
    """Rebuild the model of an artifact (no pickle: safetensors + JSON) and return it with its metadata."""
    meta_path = directory / META_FILE
    weights = directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise ArtifactError(f"{directory}: not a model artifact (expected {META_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        cfg = ModelConfig.from_mapping({**meta["model"], "pretrained": None}, where=f"{meta_path}: model")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{meta_path}: invalid model metadata ({exc})") from None
    model = build_reid_model(cfg)
    try:  # never unpickled: a pickle (or anything else) posing as safetensors is refused here
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise ArtifactError(f"{weights}: not a safetensors file ({detail})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ArtifactError(f"{weights}: weights do not fit the model in {META_FILE}: {detail}") from None
    if missing or unexpected:
        raise ArtifactError(
            f"{weights}: weights do not fit the model in {META_FILE}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), meta
