"""CRLs kept fresh: re-read CRL files when they change, and say when one has gone stale.

Operators (or a cron job fetching from the CA) replace CRL files in place; polling
their modification time and size every `crl_refresh` seconds costs one stat per file
and needs no inotify.  A changed file rebuilds its port's TLS policy exactly as a
reload would (`janustls.ops.reload.rebuild_port`) and swaps it in for new connections; a
file that cannot be used leaves the port on the CRLs it had.  A CRL whose nextUpdate
has passed is logged once; by the port's `crl_expired` the CA's clients are then
refused (OpenSSL's verdict, `refuse`) or the stale list is still used (`tolerate`).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.logger import LogLevel

from janustls.errors import ConfigErrors
from janustls.events import emit
from janustls.ops.build import PortsHost
from janustls.ops.crlfetch import FETCH_TIMEOUT, refresh
from janustls.ops.polling import FALLBACK_INTERVAL, PollingWatcher, file_stat
from janustls.ops.reload import rebuild_port, replace_port

__all__ = ["CRLWatcher", "ensure_watcher"]


class CRLWatcher(PollingWatcher):
    """Polls the CRL files of a JanusService's ports (the ports are read at every tick)."""

    name = "crl-watch"

    def __init__(self, svc: PortsHost, reactor: Any = None, quiet: bool = False) -> None:
        super().__init__(svc, reactor, quiet)
        # CRL URLs are fetched by one process: the parent of workers, or the only one.
        self.fetch = os.environ.get("JANUSTLS_WORKER") is None
        self._seen: dict[tuple[str, str], tuple[int, int, int] | None] = {}
        self._last_check: dict[str, float] = {}
        self._stale_logged: set[tuple[str, str, str]] = set()
        self._fetched_once: set[tuple[str, tuple[str, ...]]] = set()

    def interval(self) -> float:
        """The shortest crl_refresh of the ports that have CRLs (each port is checked at its own pace)."""
        values = [b.definition.crl_refresh for b in self.svc.ports if b.definition.crl and b.definition.crl_refresh > 0]
        return min(values) if values else FALLBACK_INTERVAL

    def check(self) -> None:
        """One poll: changed files rebuild their port; stale CRLs are logged once."""
        now = self._reactor.seconds() if self._reactor is not None else 0.0
        for built in list(self.svc.ports):
            port = built.definition
            if port.crl_url and port.crl_refresh <= 0:
                self._fetch_once(port)
            if not port.crl or port.crl_refresh <= 0:
                continue
            if now - self._last_check.get(port.name, -1e18) < port.crl_refresh * 0.999:
                continue
            self._last_check[port.name] = now
            self._poll_files(port)
            if port.crl_url and self.fetch and self._reactor is not None:
                # Asynchronous (Twisted's HTTP client); a changed file is taken at once.
                refresh(self.svc.definitions, port, self._reactor).addCallback(lambda _, p: self._poll_files(p), port)
            if not self.quiet:
                self._check_stale(port.name)
        if self._loop is not None:
            self._loop.interval = self.interval()

    def _fetch_once(self, port: Any) -> None:
        """crl_refresh = 0: a port's CRL URLs are fetched once, at start (or when a reload adds
        them), never again; without this a URL never fetched would refuse its clients forever."""
        key = (port.name, tuple(port.crl_url))
        if key in self._fetched_once:
            return
        self._fetched_once.add(key)
        self._poll_files(port)  # the files as they are before the fetch
        if self.fetch and self._reactor is not None:

            def fetched(_: object) -> None:
                self._poll_files(port)

            refresh(self.svc.definitions, port, self._reactor).addCallback(fetched)
        elif self._reactor is not None:
            # A worker: the parent fetches and writes the cache file;
            # look for it a few times within the fetch's bound.
            for delay in (1.0, 3.0, FETCH_TIMEOUT + 1.0):
                self._reactor.callLater(delay, self._poll_files, port)

    def _poll_files(self, port: Any) -> None:
        """Stat a port's CRL files; changed ones rebuild the port."""
        if self.svc.running is False and self._loop is None:
            return
        changed = []
        for path in port.crl:
            key = (port.name, str(path))
            state = file_stat(path)
            if key not in self._seen:
                self._seen[key] = state
            elif self._seen[key] != state:
                self._seen[key] = state
                changed.append(str(path))
        if changed:
            self._refresh(port.name, changed)

    def _refresh(self, name: str, paths: list[str]) -> None:
        try:
            rebuilt = rebuild_port(self.svc, name)
        except ConfigErrors as e:
            if self.quiet:
                return
            emit(
                "janustls.crl.failed",
                "port {port}: changed CRL file(s) {paths} cannot be used; keeping the CRLs it had: {error}",
                LogLevel.error,
                port=name,
                paths=paths,
                error="; ".join(str(x) for x in e.errors),
            )
            return
        replace_port(self.svc, rebuilt)
        for path in [] if self.quiet else paths:
            emit("janustls.crl.reloaded", "port {port}: CRL file {path} changed; new connections use it", port=name, path=path,
                 crls=len(rebuilt.runtime.tls.trust.crls))  # fmt: skip

    def _check_stale(self, name: str) -> None:
        built = next((b for b in self.svc.ports if b.definition.name == name), None)
        if built is None:
            return
        now = datetime.datetime.now(datetime.UTC)
        for crl in built.runtime.tls.trust.crls:
            next_update = crl.next_update_utc
            if next_update is None or next_update >= now:
                continue
            key = (name, crl.issuer.rfc4514_string(), next_update.isoformat())
            if key in self._stale_logged:
                continue
            self._stale_logged.add(key)
            policy = built.definition.crl_expired.value
            emit(
                "janustls.crl.expired",
                "port {port}: the CRL of {issuer} expired at {next_update} (nextUpdate); crl_expired = {policy}: {effect}",
                LogLevel.warn,
                port=name,
                issuer=crl.issuer.rfc4514_string(),
                next_update=next_update.isoformat(),
                policy=policy,
                effect="its clients are refused until a fresh CRL arrives"
                if policy == "refuse"
                else "the stale list is still used",
            )


def ensure_watcher(svc: PortsHost, reactor: Any = None, quiet: bool = False) -> None:
    """Give `svc` a CRL watcher when one of its ports has CRL files to watch or CRL URLs to fetch (and none yet)."""
    if not any((b.definition.crl and b.definition.crl_refresh > 0) or b.definition.crl_url for b in svc.ports):
        return  # nothing to watch, and no CRL URL to fetch (crl_refresh = 0 still fetches once at start)
    try:
        svc.getServiceNamed(CRLWatcher.name)
    except KeyError:
        CRLWatcher(svc, reactor, quiet).setServiceParent(svc)
