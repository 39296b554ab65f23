"""The adapter between identity rules (`janustls.core.identity`, pure) and live connections.

It builds a port's `allow =` policy at build time (errors located), looks up the
client's address when a `peer` term needs it (forward-confirmed reverse DNS, in a
thread, cached briefly), and, on srvsock and proxy ports, closes a refused
connection right after its handshake with a `janustls.refused.*` event naming the rule.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from janustls._reactor import reactor_or_global
from janustls.core.config import PortDefinition
from janustls.core.identity import Policy, PolicyError, Subject, Verdict, parse_policy
from janustls.core.procedures import ProcedureError, load_callable, load_object
from janustls.core.reasons import Reason
from janustls.errors import ConfigError, ConfigErrors
from janustls.events import emit
from janustls.ports.base import PortProtocol
from janustls.ports.connection import Connection
from janustls.ports.refusals import log_refusal

__all__ = ["PortAccess", "port_access", "reverse_names", "peer_ip", "resolver_for", "decide"]

_NAME_TTL = 60.0
_names_cache: dict[str, tuple[float, list[str]]] = {}


def resolver_for(procs: Path, *, resources: bool = False) -> Callable[[str], Any]:
    """`MODULE:CALLABLE` -> the callable, from the procedure library (for `call:` terms and rules).

    `resources`: a twisted.web resource instance is accepted too (web `call` actions).
    """
    if not resources:
        return lambda ref: load_callable(procs, ref)

    def resolve(ref: str) -> Any:
        target = load_object(procs, ref)
        if not (callable(target) or IResource.providedBy(target)):
            raise ProcedureError(f"{ref} is neither callable nor a twisted.web resource")
        return target

    return resolve


def peer_ip(peer: Any) -> str | None:
    host = getattr(peer, "host", None)
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _confirmed_names(ip: str) -> list[str]:
    """Names `ip` reverse-resolves to that also resolve forward to `ip` (no PTR spoofing)."""
    try:
        name, aliases, _ = socket.gethostbyaddr(ip)
    except OSError:
        return []
    confirmed = []
    for candidate in [name, *aliases]:
        try:
            infos = socket.getaddrinfo(candidate, None)
        except OSError:
            continue
        if any(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) == ip for info in infos):
            confirmed.append(candidate)
    return confirmed


def reverse_names(ip: str, reactor: Any = None) -> defer.Deferred[list[str]]:
    """Forward-confirmed reverse lookup in a thread; answers cached for a minute."""
    now = time.monotonic()
    hit = _names_cache.get(ip)
    if hit is not None and now - hit[0] < _NAME_TTL:
        return defer.succeed(hit[1])

    def store(names: list[str]) -> list[str]:
        if len(_names_cache) > 4096:
            _names_cache.clear()
        _names_cache[ip] = (time.monotonic(), names)
        return names

    reactor = reactor_or_global(reactor)
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _confirmed_names, ip).addCallback(store)


def decide(policy: Policy, subject: Subject, reactor: Any = None) -> defer.Deferred[Verdict]:
    """The verdict, after a reverse lookup when a `peer` term needs one; a raising predicate refuses."""

    def check(s: Subject) -> Verdict:
        try:
            return policy.check(s)
        except Exception as e:  # a `call:` predicate raised
            emit(
                "janustls.handler.error",
                "identity predicate in {rule} raised: {error}",
                LogLevel.error,
                rule=policy.rule,
                error=f"{type(e).__name__}: {e}",
                log_failure=Failure(),
            )
            return Verdict(False, policy.rule, Reason.NOT_ALLOWED)

    if policy.needs_lookup(subject):
        assert subject.peer_ip is not None
        d = reverse_names(subject.peer_ip, reactor)
        d.addErrback(lambda _: [])
        return d.addCallback(lambda names: check(replace(subject, peer_names=tuple(names))))
    return defer.succeed(check(subject))


class PortAccess:
    """A srvsock or proxy port's `allow =`: admit after the handshake, or close (logged)."""

    def __init__(self, port: PortDefinition, policy: Policy) -> None:
        self.port = port
        self.policy = policy

    def admit(self, protocol: PortProtocol, conn: Connection, ready: Callable[[Connection], None]) -> None:
        subject = Subject(conn.verified_chain, peer_ip(conn.peer), None, conn)
        d = decide(self.policy, subject, protocol.factory.runtime.reactor)

        def done(verdict: Verdict) -> None:
            if verdict.allowed:
                ready(conn)
                return
            refusal = verdict.refusal(subject)
            assert refusal is not None
            protocol.factory.runtime.refused += 1
            chain = conn.verified_chain
            log_refusal(self.port.name, protocol.peer_text(), refusal, chain[0] if chain else None, rule=verdict.rule)
            protocol.close()

        d.addCallback(done)


def build_policy(port: PortDefinition, procs: Path) -> Policy | None:
    """The port's `allow =` parsed, or None; a located ConfigError otherwise."""
    if port.allow is None:
        return None
    try:
        return parse_policy(port.allow, f"[{port.section}] allow", resolver_for(procs))
    except PolicyError as e:
        raise ConfigErrors([ConfigError(port.source, port.section, "allow", f"identity expression {e}")]) from None


def port_access(port: PortDefinition, procs: Path) -> PortAccess | None:
    policy = build_policy(port, procs)
    return PortAccess(port, policy) if policy is not None else None
