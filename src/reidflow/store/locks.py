"""Who holds what: a lock file naming its holder (pid and host), and stale-holder detection.

A holder on this host whose pid no longer runs is stale (a run killed with ``kill -9``); its lock or
temporary folder may be taken over or removed. A holder on another host cannot be checked from here
and counts as alive: the error names the file to delete if that run is known to be gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from reidflow.errors import ConfigError
from reidflow.store.lineage import now_iso

log = logging.getLogger(__name__)


def this_host() -> str:
    return socket.gethostname()


def holder_alive(pid: int, host: str) -> bool:
    """False only when ``host`` is this machine and no process ``pid`` exists."""
    if host != this_host():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunLock:
    """``<path>`` held by this process for the duration of a run (a ``with`` block or acquire/release).

    Re-entrant within one process (a second acquire by the same pid and host is a no-op that the
    matching release undoes), so one process may train, stop and resume in turn.
    """

    path: Path
    what: str = "this output"
    _depth: int = 0

    def acquire(self) -> Self:
        if self._depth:
            self._depth += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": this_host(), "since": now_iso()}
        for _ in range(3):
            # the content is written first, then linked into place: a lock file is never seen empty
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(me))
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile: try again
                pid, host = holder.get("pid"), holder.get("host")
                if pid == me["pid"] and host == me["host"]:
                    self._depth = 1
                    return self
                if isinstance(pid, int) and isinstance(host, str) and not holder_alive(pid, host):
                    log.warning(
                        "%s: taking over a stale lock of pid %s on %s (not running)", self.path, pid, host
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(
                    f"{self.path}: another run is writing {self.what} (pid {pid} on {host} since "
                    f"{holder.get('since')}); wait for it, or delete this lock file if that run is gone"
                ) from None
            finally:
                tmp.unlink(missing_ok=True)
            self._depth = 1
            return self
        raise ConfigError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def _holder(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": None, "host": None, "since": "unknown (unreadable lock file)"}
        return doc if isinstance(doc, dict) else {"pid": None, "host": None}

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == this_host():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
