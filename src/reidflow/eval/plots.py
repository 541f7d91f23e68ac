"""Figures of the evaluation report (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageOps


def cmc_curves(curves: Mapping[str, np.ndarray], title: str, out: Path, max_rank: int = 20) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
    ranks = np.arange(1, max_rank + 1)
    for label, cmc in curves.items():
        ax.plot(ranks, 100 * np.asarray(cmc)[:max_rank], marker=".", label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def retrieval_grid(
    rows: Sequence[tuple[bytes, Sequence[tuple[bytes, bool]]]],
    out: Path,
    cell: tuple[int, int] = (128, 64),
    border: int = 4,
) -> Path:
    """One row per query: the query (blue border) then its top-k gallery items (green match / red not)."""
    h, w = cell
    k = max((len(r[1]) for r in rows), default=0)
    gap = 12
    canvas = Image.new("RGB", ((w + 2 * border) * (k + 1) + gap, (h + 2 * border) * len(rows)), "white")
    for r, (query, ranked) in enumerate(rows):
        y = r * (h + 2 * border)
        canvas.paste(_framed(query, cell, border, (40, 90, 220)), (0, y))
        for c, (img, match) in enumerate(ranked):
            color = (30, 170, 60) if match else (220, 40, 40)
            canvas.paste(_framed(img, cell, border, color), (gap + (c + 1) * (w + 2 * border), y))
    canvas.save(out)
    return out


def _framed(data: bytes, cell: tuple[int, int], border: int, color: tuple[int, int, int]) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((cell[1], cell[0]))
    return ImageOps.expand(img, border=border, fill=color)


def embedding_scatter(
    coords: np.ndarray, domains: Sequence[str], pids: np.ndarray, out: Path, title: str
) -> Path:
    """Two panels: the same 2-D embedding coloured by domain and by identity."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), dpi=110)
    domain_names = sorted(set(domains))
    cmap = plt.get_cmap("tab10")
    dom = np.asarray(domains)
    for i, name in enumerate(domain_names):
        m = dom == name
        axes[0].scatter(coords[m, 0], coords[m, 1], s=6, color=cmap(i % 10), label=name, alpha=0.7)
    axes[0].legend(fontsize=7, markerscale=2)
    axes[0].set_title("by domain")
    ids = np.unique(pids, return_inverse=True)[1]
    axes[1].scatter(coords[:, 0], coords[:, 1], s=6, c=ids % 20, cmap="tab20", alpha=0.8)
    axes[1].set_title("by identity (colours repeat every 20 ids)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def training_curve(history: Sequence[Mapping[str, float]], out: Path, title: str) -> Path:
    """Loss terms and learning rate over iterations."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if history:
        its = [h["iteration"] for h in history]
        keys = sorted({k for h in history for k in h if k not in ("iteration", "epoch", "lr", "seconds")})
        for key in keys:
            ax.plot(its, [h.get(key, np.nan) for h in history], label=key, lw=1)
        if any("lr" in h for h in history):
            ax2 = ax.twinx()
            ax2.plot(its, [h.get("lr", np.nan) for h in history], color="gray", ls="--", lw=1, label="lr")
            ax2.set_ylabel("learning rate")
        ax.legend(fontsize=7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def gate_profile(layers: Sequence[Mapping[str, float]], out: Path, title: str) -> Path:
    """Per-layer BN/IN gate ρ (mean and 10-90 % band) in network order: 1 = batch norm, 0 = instance norm."""
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    x = np.arange(len(layers))
    if layers:
        ax.fill_between(
            x, [g["p10"] for g in layers], [g["p90"] for g in layers], alpha=0.25, label="10-90 %"
        )
        ax.plot(x, [g["mean"] for g in layers], lw=1.2, marker=".", label="mean ρ")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("gated norm layer (input → output)")
    ax.set_ylabel("ρ  (1 = BN, 0 = IN)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
