"""Reload without restart: validate the whole new definition file, then swap, or change nothing.

Everything is built first (`build_ports`: certificates, keys, CAs, CRLs, handlers,
web rules) and new listening addresses are opened; only when all of that worked are
the ports swapped.  A kept port adopts the new TLS Context, trust and application
factory for new connections (`PortTLSFactory.adopt`); its established connections
keep the Context and runtime they started with.  Removed ports stop listening (their
connections go on until they end); added ports start.  Any error: nothing changes,
and `janustls.reload.failed` lists every problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogLevel

from janustls.core.config import Definitions, load_definitions
from janustls.tls import tickets
from janustls.errors import ConfigError, ConfigErrors, MaterialError
from janustls.events import emit
from janustls.core.procedures import forget_modules
from janustls.ops.service import BuiltPort, PortService, build_port, build_ports

if TYPE_CHECKING:
    from janustls.ops.service import JanusService

__all__ = ["reload_service", "replace_port"]


def _same_socket(a: BuiltPort, b: BuiltPort) -> bool:
    x, y = a.definition, b.definition
    return x.listen == y.listen and x.proxy_protocol == y.proxy_protocol and x.type == y.type


def _adopt(old: BuiltPort, new: BuiltPort) -> None:
    """`old` (listening) serves new connections as `new` was built; NumSigned carries over."""
    new.runtime.tls.trust.signed.update(old.runtime.tls.trust.signed)
    old.factory.adopt(new.factory)
    old.runtime = old.factory.runtime
    old.definition = new.definition


def replace_port(svc: JanusService, built: BuiltPort) -> None:
    """Swap a rebuilt port (same address) into a running service: CRL refresh uses this."""
    for b in svc.ports:
        if b.definition.name == built.definition.name:
            _adopt(b, built)
            return
    raise KeyError(built.definition.name)


def _failed(source: str, errors: list[str]) -> bool:
    emit(
        "janustls.reload.failed",
        "reload of {source} failed; nothing changed:\n  {listing}",
        LogLevel.error,
        source=source,
        errors=errors,
        listing="\n  ".join(errors),
    )
    return False


def svc_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@defer.inlineCallbacks
def reload_service(svc: JanusService, definitions: Definitions | None = None, why: str = "call") -> Any:
    """Reload `svc` from its definition file (or from `definitions`); fires True when swapped."""
    source = svc.definitions.source
    emit("janustls.reload.started", "reloading {source} ({why})", source=source, why=why)
    reactor = svc._reactor  # noqa: SLF001  # the reactor the service was built with (None: the global one)
    try:
        tickets.reload_master()  # a rotated ticket key file takes effect with the new Contexts
        new_defs = definitions if definitions is not None else load_definitions(source)
        forget_modules(new_defs.procs)  # changed handler files are read again
        if any(p.crl_url for p in new_defs.ports):
            from janustls.ops.crlfetch import prefetch

            yield prefetch(new_defs, reactor or svc_reactor())  # new CRL URLs; the ports keep serving meanwhile
        built = build_ports(new_defs, reactor)
    except MaterialError as e:
        return _failed(source, [str(e)])
    except ConfigErrors as e:
        return _failed(source, [str(x) for x in e.errors])
    except Exception as e:  # an unexpected failure while building must not half-apply either
        return _failed(source, [f"{source}: {type(e).__name__}: {e}"])
    old = {b.definition.name: b for b in svc.ports}
    new = {b.definition.name: b for b in built}
    kept = [n for n in new if n in old and _same_socket(old[n], new[n])]
    added = [n for n in new if n not in kept]
    removed = [n for n in old if n not in kept]
    # Ports whose address changed are removed and added: free their old address first
    # only when the new one is the same (never the case here), so open new addresses now.
    opened: dict[str, IListeningPort] = {}
    errors: list[str] = []
    for name in added:
        b = new[name]
        try:
            opened[name] = yield b.endpoint.listen(b.factory)
        except Exception as e:  # any listen failure aborts the whole reload
            errors.append(str(ConfigError(b.definition.source, b.definition.section, "listen", f"cannot listen: {e}")))
    status_moved = new_defs.status != svc.definitions.status
    new_status: Any = None
    if not errors and status_moved and new_defs.status is not None:
        from janustls.ops.status import StatusService

        new_status = StatusService(new_defs.status.listen, lambda: svc.ports, reactor)
        try:
            new_status.adopt((yield new_status.open()))
        except Exception as e:  # refused as a whole: the old listener and ports stay
            errors.append(str(ConfigError(new_defs.source, "status", "listen", f"cannot listen: {e}")))
    if errors:
        for listening in opened.values():
            yield listening.stopListening()
        return _failed(source, errors)
    # Validated and opened: swap.
    for name in kept:
        _adopt(old[name], new[name])
    for name in removed:
        yield defer.maybeDeferred(svc.removeService, svc.getServiceNamed(name))
    for name in added:
        PortService(new[name], listening=opened[name]).setServiceParent(svc)
    svc.ports = [old[n] if n in kept else new[n] for n in new]
    svc.definitions = new_defs
    if status_moved:
        yield _replace_status(svc, new_status)
    from janustls.ops.crlwatch import ensure_watcher

    ensure_watcher(svc, svc._reactor)  # noqa: SLF001  # a port with CRL files may have been added
    from janustls.ops.certwatch import ensure_cert_watcher

    ensure_cert_watcher(svc, svc._reactor)  # noqa: SLF001
    emit(
        "janustls.reload.done",
        "reloaded {source}: {nkept} port(s) kept with new settings, added {added}, removed {removed}",
        source=source,
        kept=kept,
        added=added,
        removed=removed,
        nkept=len(kept),
    )
    return True


@defer.inlineCallbacks
def _replace_status(svc: JanusService, new_status: Any) -> Any:
    """The old status listener stops; `new_status` (already bound by `open`), if any, starts."""
    try:
        current = svc.getServiceNamed("status")
    except KeyError:
        current = None
    if current is not None:
        yield defer.maybeDeferred(svc.removeService, current)
    if new_status is not None:
        new_status.setServiceParent(svc)


def rebuild_port(svc: JanusService, name: str) -> BuiltPort:
    """Build one port of the running definitions again (its files re-read); ConfigErrors on failure."""
    definitions = svc.definitions
    port = definitions.port(name)
    return build_port(port, definitions.procs, svc._reactor, definitions.web.get(port.name, ()), definitions.key_material())  # noqa: SLF001
