"""Server certificates rotated on change: the `certificate` and `private_key` files are watched.

certbot, cert-manager or a Vault agent rewrite these files every few hours; polling their
modification time and size every `cert_refresh` seconds (one stat per file, no inotify)
sees the change.  A changed pair is loaded and checked first (it parses, the key matches
the certificate, the certificate is valid now); only then is the port rebuilt exactly as
a reload would (`janustls.ops.reload.rebuild_port`) and swapped in for new connections, while
open ones keep the pair they negotiated with.  A broken, mismatched or expired pair is
refused and logged, and the old pair keeps serving (a writer that replaces the
certificate before the key is seen as mismatched once, then as the new pair).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel

from janustls.core.materials import load_server_material
from janustls.errors import ConfigErrors, MaterialError
from janustls.events import emit
from janustls.ops.build import PortsHost
from janustls.ops.polling import FALLBACK_INTERVAL, PollingWatcher, file_stat
from janustls.ops.reload import rebuild_port, replace_port

__all__ = ["CertWatcher", "ensure_cert_watcher"]


class CertWatcher(PollingWatcher):
    """Polls the certificate and key files of a JanusService's ports (read at every tick)."""

    name = "cert-watch"

    def __init__(self, svc: PortsHost, reactor: Any = None, quiet: bool = False) -> None:
        super().__init__(svc, reactor, quiet)
        self._seen: dict[str, tuple[Any, Any]] = {}
        self._last_check: dict[str, float] = {}

    def interval(self) -> float:
        values = [b.definition.cert_refresh for b in self.svc.ports if b.definition.cert_refresh > 0]
        return min(values) if values else FALLBACK_INTERVAL

    def check(self) -> None:
        """One poll: a port whose pair changed is rebuilt when the new pair is usable."""
        now = self._reactor.seconds() if self._reactor is not None else 0.0
        for built in list(self.svc.ports):
            port = built.definition
            if port.cert_refresh <= 0:
                continue
            if now - self._last_check.get(port.name, -1e18) < port.cert_refresh * 0.999:
                continue
            self._last_check[port.name] = now
            state = (file_stat(port.certificate), file_stat(port.private_key))
            seen = self._seen.get(port.name)
            self._seen[port.name] = state
            if seen is None or seen == state:
                continue
            self._rotate(built)
        if self._loop is not None:
            self._loop.interval = self.interval()

    def _rotate(self, built: Any) -> None:
        port = built.definition
        paths = sorted({str(port.certificate), str(port.private_key)})
        try:
            material = load_server_material(port.certificate, port.private_key, port.private_key_password_env)
            rebuilt = rebuild_port(self.svc, port.name)
        except MaterialError as e:
            self._failed(port.name, paths, str(e))
            return
        except ConfigErrors as e:
            self._failed(port.name, paths, "; ".join(str(x) for x in e.errors))
            return
        if material.leaf == built.runtime.tls.material.leaf and material.chain == built.runtime.tls.material.chain:
            return  # rewritten with the same content: nothing to swap
        replace_port(self.svc, rebuilt)
        leaf = rebuilt.runtime.tls.material.leaf
        if self.quiet:
            return
        emit(
            "janustls.cert.rotated",
            "port {port}: new certificate (serial {serial}, valid until {not_after}) serves new connections",
            port=port.name,
            serial=format(leaf.serial_number, "X"),
            not_after=leaf.not_valid_after_utc.isoformat(),
            subject=leaf.subject.rfc4514_string(),
        )

    def _failed(self, name: str, paths: list[str], error: str) -> None:
        if self.quiet:
            return
        emit(
            "janustls.cert.rotation_failed",
            "port {port}: changed {paths} cannot be used; the old certificate keeps serving: {error}",
            LogLevel.error,
            port=name,
            paths=paths,
            error=error,
        )


def ensure_cert_watcher(svc: PortsHost, reactor: Any = None, quiet: bool = False) -> None:
    """Give `svc` a certificate watcher when a port has cert_refresh > 0 (and none yet);
    `quiet`: the parent of workers (they log; it keeps /status current)."""
    if not any(b.definition.cert_refresh > 0 for b in svc.ports):
        return
    try:
        svc.getServiceNamed(CertWatcher.name)
    except KeyError:
        CertWatcher(svc, reactor, quiet).setServiceParent(svc)
