"""Observability: progress reporting (and, from another module, Prometheus metrics)."""

from reidflow.obs.progress import Progress, progress_enabled

__all__ = ["Progress", "progress_enabled"]
