"""One progress helper for every long-running stage.

On an interactive terminal it draws a tqdm bar; in CI, under an orchestrator or when stderr is
not a TTY it draws nothing and instead logs one line every ``log_every_s`` seconds (and at the
end), so logs of batch runs still show progress without megabytes of carriage returns.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from tqdm import tqdm

_CI_VARS = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "KFP_POD_NAME", "DVC_EXP_NAME")
_DISABLE_VAR = "REIDFLOW_NO_PROGRESS"


def progress_enabled(stream: Any = None) -> bool:
    """True when a live bar makes sense: ``stream`` (stderr) is a TTY and we are not in CI."""
    if os.environ.get(_DISABLE_VAR, "") not in ("", "0"):
        return False
    if any(os.environ.get(var) for var in _CI_VARS):
        return False
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _format_postfix(postfix: Mapping[str, Any]) -> str:
    parts = []
    for key, value in postfix.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class Progress:
    """Counts work done out of ``total``; a tqdm bar or periodic log lines (see module doc)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        enabled: bool | None = None,
        log_every_s: float = 30.0,
        logger: logging.Logger | None = None,
        initial: int = 0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.log_every_s = log_every_s
        self.logger = logger or logging.getLogger("reidflow.progress")
        self.enabled = progress_enabled() if enabled is None else enabled
        self._postfix: dict[str, Any] = {}
        self._start = time.monotonic()
        self._start_n = initial
        self._last_log = self._start
        self._bar = (
            tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=True)
            if self.enabled
            else None
        )
        self._closed = False

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and optionally replace the displayed key=value pairs."""
        self.n += n
        if postfix:
            self._postfix = dict(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(_format_postfix(self._postfix), refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.logger.info(self.status_line())

    def status_line(self) -> str:
        """``desc: n/total unit (pct) rate unit/s, eta Xs key=value ...``"""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        line = f"{self.desc}: {self.n}"
        if self.total:
            line += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.1f}%)"
            if rate > 0:
                line += f", eta {max(self.total - self.n, 0) / rate:.0f}s"
        else:
            line += f" {self.unit}"
        line += f", {rate:.3g} {self.unit}/s"
        if self._postfix:
            line += " " + _format_postfix(self._postfix)
        return line

    def callback(self) -> Callable[[int, int], None]:
        """An ``(n_done, n_total)`` callable for APIs that report absolute progress."""

        def report(n_done: int, n_total: int) -> None:
            if self.total != n_total:
                self.total = n_total
                if self._bar is not None:
                    self._bar.total = n_total
            self.update(n_done - self.n)

        return report

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self.logger.info(self.status_line())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
