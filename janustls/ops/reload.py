"""Reload without restart: validate the whole new definition file, then swap, or change nothing.

Everything is built first (`build_ports`: certificates, keys, CAs, CRLs, handlers,
web rules) and new listening addresses are opened; only when all of that worked are
the ports swapped.  A kept port adopts the new TLS Context, trust and application
factory for new connections (`PortTLSFactory.adopt`); its established connections
keep the Context and runtime they started with.  Removed ports stop listening (their
connections go on until they end); added ports start.  Any error: nothing changes,
and `janustls.reload.failed` lists every problem.

This module is the one planner of both reloads: the single-process service
(`JanusService.reload`) and the workers' parent (`WorkersService.reload`) read the file,
build and plan with it, and differ only in how they swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel

from janustls.core.config import Definitions, PortDefinition, load_definitions
from janustls.core.procedures import forget_modules
from janustls.errors import ConfigErrors, MaterialError
from janustls.events import emit
from janustls.ops import staple
from janustls.ops.build import BuiltPort, PortsHost, build_port

__all__ = ["ReloadPlan", "plan_reload", "same_port", "read_again", "error_texts", "started", "failed", "done",
           "adopt", "replace_port", "rebuild_port", "stop_listening"]  # fmt: skip


def same_port(a: PortDefinition, b: PortDefinition, *, shared_socket: bool = False) -> bool:
    """Whether `b` can keep serving on `a`'s listening socket.

    The same address, always.  A port listening in this process also wraps its socket
    (the PROXY-protocol reader, the port type's factory), so those must match too;
    workers share the bare socket (`shared_socket`) and each new worker wraps it again.
    """
    if a.listen != b.listen:
        return False
    return shared_socket or (a.proxy_protocol == b.proxy_protocol and a.type == b.type)


@dataclass(frozen=True)
class ReloadPlan:
    """Port names, in the new file's order for `kept` and `added`."""

    kept: list[str]
    added: list[str]
    removed: list[str]


def plan_reload(
    old: Mapping[str, PortDefinition], new: Sequence[PortDefinition], *, shared_socket: bool = False
) -> ReloadPlan:
    """What a reload from `old` (by name) to `new` keeps, adds and removes; a port whose socket
    cannot be kept (`same_port`) is removed and added."""
    kept = [p.name for p in new if p.name in old and same_port(old[p.name], p, shared_socket=shared_socket)]
    added = [p.name for p in new if p.name not in kept]
    removed = [n for n in old if n not in kept]
    return ReloadPlan(kept, added, removed)


def started(source: str, why: str) -> None:
    emit("janustls.reload.started", "reloading {source} ({why})", source=source, why=why)


def failed(source: str, errors: list[str]) -> bool:
    """Log a reload that changed nothing; False, the reload's result."""
    emit(
        "janustls.reload.failed",
        "reload of {source} failed; nothing changed:\n  {listing}",
        LogLevel.error,
        source=source,
        errors=errors,
        listing="\n  ".join(errors),
    )
    return False


def done(source: str, message: str, **fields: Any) -> None:
    emit("janustls.reload.done", message, source=source, **fields)


def read_again(source: str, definitions: Definitions | None) -> Definitions:
    """The file read again (or `definitions`), with changed handler modules forgotten so that
    building reads them as they are now; ConfigErrors when the file is wrong."""
    new_defs = definitions if definitions is not None else load_definitions(source)
    forget_modules(new_defs.procs)
    return new_defs


def error_texts(e: Exception, source: str) -> list[str]:
    """The located problems of a failed read or build, one text each."""
    if isinstance(e, ConfigErrors):
        return [str(x) for x in e.errors]
    if isinstance(e, MaterialError):
        return [str(e)]
    return [f"{source}: {type(e).__name__}: {e}"]


def adopt(old: BuiltPort, new: BuiltPort) -> None:
    """`old` (listening) serves new connections as `new` was built; NumSigned carries over."""
    new.runtime.tls.trust.signed.update(old.runtime.tls.trust.signed)
    if old.listening is not None:  # a live port: the new certificate's stapler, if another, takes over
        staple.swap(old.runtime.stapler, new.runtime.stapler)
    old.factory.adopt(new.factory)
    old.runtime = old.factory.runtime
    old.definition = new.definition


def replace_port(host: PortsHost, built: BuiltPort) -> None:
    """Swap a rebuilt port (same address) into a running service: CRL refresh uses this."""
    for b in host.ports:
        if b.definition.name == built.definition.name:
            adopt(b, built)
            return
    raise KeyError(built.definition.name)


def rebuild_port(host: PortsHost, name: str) -> BuiltPort:
    """Build one port of the running definitions again (its files re-read); ConfigErrors on failure."""
    definitions = host.definitions
    port = definitions.port(name)
    return build_port(
        port, definitions.procs, host.reactor, definitions.web.get(port.name, ()), definitions.key_material()
    )


@defer.inlineCallbacks
def stop_listening(opened: Mapping[str, Any]) -> Any:
    """Close what a refused reload had opened already."""
    for listening in opened.values():
        yield listening.stopListening()
