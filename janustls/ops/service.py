"""The single-process service: every port of a definition file, its watchers, its status listener, its reload.

The ports themselves are built by `janustls.ops.build`; a reload is planned by
`janustls.ops.reload` (shared with the workers' parent) and swapped here.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort

from janustls._reactor import reactor_or_global
from janustls.core.config import Definitions
from janustls.errors import ConfigError
from janustls.ops import reload as planner
from janustls.ops.build import BuiltPort, PortService, build_ports
from janustls.ops.certwatch import ensure_cert_watcher
from janustls.ops.crlfetch import prefetch
from janustls.ops.crlwatch import ensure_watcher
from janustls.tls import tickets

__all__ = ["JanusService"]


def _status_service(definitions: Definitions, ports: Any, reactor: Any) -> Any:
    """The [status] listener.  Imported here, not at the top: prometheus-client fixes its value
    class when first imported, and `--workers` must set PROMETHEUS_MULTIPROC_DIR before that."""
    from janustls.ops.status import StatusService

    assert definitions.status is not None
    return StatusService(definitions.status.listen, ports, reactor)


class JanusService(service.MultiService):
    """Every port of a definition file; construction fails fast with ConfigErrors."""

    def __init__(self, definitions: Definitions, reactor: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self.definitions = definitions
        self.ports: list[BuiltPort] = build_ports(definitions, reactor)
        #: The reactor the service was built with; None: the global one.
        self.reactor = reactor
        for built in self.ports:
            PortService(built).setServiceParent(self)
        ensure_watcher(self, reactor)
        ensure_cert_watcher(self, reactor)  # certificate and key files rotated on change
        if definitions.status is not None:
            _status_service(definitions, lambda: self.ports, reactor).setServiceParent(self)

    @defer.inlineCallbacks
    def reload(self, definitions: Definitions | None = None, why: str = "call") -> Any:
        """Re-read the definition file (or take `definitions`), validate all of it, then swap; fires True when swapped."""
        source = self.definitions.source
        planner.started(source, why)
        reactor = self.reactor
        try:
            tickets.reload_master()  # a rotated ticket key file takes effect with the new Contexts
            new_defs = planner.read_again(source, definitions)
            if any(p.crl_url for p in new_defs.ports):
                yield prefetch(new_defs, reactor_or_global(reactor))  # new CRL URLs; the ports keep serving meanwhile
            built = build_ports(new_defs, reactor)
        except Exception as e:  # an unexpected failure while building must not half-apply either
            return planner.failed(source, planner.error_texts(e, source))
        old = {b.definition.name: b for b in self.ports}
        new = {b.definition.name: b for b in built}
        plan = planner.plan_reload({n: b.definition for n, b in old.items()}, [b.definition for b in built])
        # Ports whose address changed are removed and added: open the new addresses now.
        opened: dict[str, IListeningPort] = {}
        errors: list[str] = []
        for name in plan.added:
            b = new[name]
            try:
                opened[name] = yield b.endpoint.listen(b.factory)
            except Exception as e:  # any listen failure aborts the whole reload
                errors.append(
                    str(ConfigError(b.definition.source, b.definition.section, "listen", f"cannot listen: {e}"))
                )
        status_moved = new_defs.status != self.definitions.status
        new_status: Any = None
        if not errors and status_moved and new_defs.status is not None:
            new_status = _status_service(new_defs, lambda: self.ports, reactor)
            try:
                new_status.adopt((yield new_status.open()))
            except Exception as e:  # refused as a whole: the old listener and ports stay
                errors.append(str(ConfigError(new_defs.source, "status", "listen", f"cannot listen: {e}")))
        if errors:
            yield planner.stop_listening(opened)
            return planner.failed(source, errors)
        # Validated and opened: swap.
        for name in plan.kept:
            planner.adopt(old[name], new[name])
        for name in plan.removed:
            yield defer.maybeDeferred(self.removeService, self.getServiceNamed(name))
        for name in plan.added:
            PortService(new[name], listening=opened[name]).setServiceParent(self)
        self.ports = [old[n] if n in plan.kept else new[n] for n in new]
        self.definitions = new_defs
        if status_moved:
            yield self._replace_status(new_status)
        ensure_watcher(self, reactor)  # a port with CRL files may have been added
        ensure_cert_watcher(self, reactor)
        planner.done(
            source,
            "reloaded {source}: {nkept} port(s) kept with new settings, added {added}, removed {removed}",
            kept=plan.kept,
            added=plan.added,
            removed=plan.removed,
            nkept=len(plan.kept),
        )
        return True

    @defer.inlineCallbacks
    def _replace_status(self, new_status: Any) -> Any:
        """The old status listener stops; `new_status` (already bound by `open`), if any, starts."""
        try:
            current = self.getServiceNamed("status")
        except KeyError:
            current = None
        if current is not None:
            yield defer.maybeDeferred(self.removeService, current)
        if new_status is not None:
            new_status.setServiceParent(self)

    def listening_port(self, name: str) -> IListeningPort | None:
        svc = self.getServiceNamed(name.upper())
        return svc.listening  # type: ignore[no-any-return]  # the named service is untyped (Twisted)
