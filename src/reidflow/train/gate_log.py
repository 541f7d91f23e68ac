"""Gate trajectories of BIN/MetaBIN models: how the learned BN/IN mix ρ moves during training.

The methods that train gates (``pretrain`` with ``norm: bin``, ``metabin``) add
:func:`gate_trajectory_metrics` to their step metrics every ``every`` iterations, so the trajectory
lands in the engine's history (``training_curve.json``) with everything else that is logged, and
survives a resume the same way. :func:`save_gate_trajectories` writes it per backbone stage as
``gate_trajectories.json`` and draws ``gate_trajectories.png``: the mean of ρ and the band between
its 10th and 90th percentile (how the authors watch their gates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from reidflow.models.norms import gate_parameters

PREFIX = "rho/"


def gate_stage(name: str) -> str:
    """The backbone stage a gate belongs to: ``backbone.conv3.1.conv1.bn.rho`` -> ``conv3``."""
    parts = name.removesuffix(".rho").split(".")
    if parts and parts[0] == "backbone":
        parts = parts[1:]
    return parts[0] if len(parts) > 1 else "stem"


@torch.no_grad()
def gate_trajectory_metrics(model: nn.Module) -> dict[str, float]:
    """``rho/<stage>/{mean,p10,p90}`` per stage and ``rho/all/mean``; empty for a model without gates."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, rho in gate_parameters(model).items():
        groups.setdefault(gate_stage(name), []).append(rho.detach().float().flatten())
    if not groups:
        return {}
    out: dict[str, float] = {}
    every = []
    for stage, values in groups.items():
        flat = torch.cat(values).clamp(0.0, 1.0).cpu()
        every.append(flat)
        p10, p90 = torch.quantile(flat, torch.tensor([0.1, 0.9])).tolist()
        out[f"{PREFIX}{stage}/mean"] = float(flat.mean())
        out[f"{PREFIX}{stage}/p10"] = p10
        out[f"{PREFIX}{stage}/p90"] = p90
    out[f"{PREFIX}all/mean"] = float(torch.cat(every).mean())
    return out


def trajectory_from_history(records: Sequence[Mapping[str, float]]) -> dict[str, dict[str, list[float]]]:
    """Per stage: iterations and the mean / p10 / p90 series, read back from the history records."""
    stages: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if not key.startswith(PREFIX) or not key.endswith("/mean"):
                continue
            stage = key[len(PREFIX) : -len("/mean")]
            series = stages.setdefault(stage, {"iteration": [], "mean": [], "p10": [], "p90": []})
            series["iteration"].append(float(record["iteration"]))
            series["mean"].append(float(value))
            series["p10"].append(float(record.get(f"{PREFIX}{stage}/p10", value)))
            series["p90"].append(float(record.get(f"{PREFIX}{stage}/p90", value)))
    return stages


def save_gate_trajectories(records: Sequence[Mapping[str, float]], directory: Path, title: str) -> bool:
    """``gate_trajectories.json`` and ``.png`` in ``directory``; False (nothing written) without gates."""
    stages = trajectory_from_history(records)
    if not stages:
        return False
    (directory / "gate_trajectories.json").write_text(json.dumps(stages, indent=1) + "\n")
    plot_gate_trajectories(records, directory / "gate_trajectories.png", title)
    return True


def plot_gate_trajectories(records: Sequence[Mapping[str, float]], out: Path, title: str) -> Path | None:
    """``gate_trajectories.png``: mean ρ per stage over iterations with its p10-p90 band."""
    stages = trajectory_from_history(records)
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for stage, series in stages.items():
        if stage == "all":
            ax.plot(series["iteration"], series["mean"], color="black", lw=1.6, label="all (mean)")
            continue
        (line,) = ax.plot(series["iteration"], series["mean"], lw=1.2, label=stage)
        ax.fill_between(series["iteration"], series["p10"], series["p90"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("iteration")
    ax.set_ylabel("ρ (1 = BN, 0 = IN)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
