"""Files watched by polling: what the CRL and certificate watchers share.

A stat per file every few seconds needs no inotify and works on every filesystem (a
Kubernetes secret volume swaps a symlink; a Vault agent rewrites in place).  A watcher
ticks at the shortest interval its ports ask for (`interval`) and reads the service's
ports at every tick, so a reload needs no bookkeeping here.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall

from janustls._reactor import reactor_or_global
from janustls.ops.build import PortsHost

__all__ = ["PollingWatcher", "file_stat"]

#: Seconds between ticks when no port asks for a pace of its own.
FALLBACK_INTERVAL = 60.0


def file_stat(path: os.PathLike[str] | str) -> tuple[int, int, int] | None:
    """What tells a rewritten file apart: modification time, size and inode; None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PollingWatcher(service.Service):
    """A service calling `check` every `interval()` seconds while it runs (the first at once)."""

    def __init__(self, svc: PortsHost, reactor: Any = None, quiet: bool = False) -> None:
        self.svc = svc
        self._reactor = reactor
        # The parent of worker processes keeps its /status view current without logging
        # what each worker logs itself.
        self.quiet = quiet
        self._loop: LoopingCall | None = None

    def interval(self) -> float:
        """Seconds between ticks."""
        return FALLBACK_INTERVAL

    def check(self) -> None:
        """One tick."""

    def startService(self) -> None:
        service.Service.startService(self)
        self._reactor = reactor_or_global(self._reactor)
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._reactor
        self._loop.start(self.interval(), now=True)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
