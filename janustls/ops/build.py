"""Definitions -> running ports: the Python API behind twistd, the endpoint plugin and embedding.

Everything is built and checked before anything listens: `build_ports` raises one
ConfigErrors listing every problem of every port, so a bad file starts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from janustls._reactor import reactor_or_global
from janustls.core.config import Definitions, OCSPScope, PortDefinition, PortType, WebRuleLine
from janustls.core.procedures import ProcedureError, load_callable
from janustls.errors import ConfigError, ConfigErrors
from janustls.events import emit
from janustls.ops.ocspcheck import OCSPChecker
from janustls.ops.staple import stapler_for
from janustls.ports.accept_proxy import ProxyHeaderEndpoint
from janustls.ports.access import port_access
from janustls.ports.base import PortFactory, PortRuntime, PortTLSFactory
from janustls.ports.proxy import ProxyFactory, ProxyTLSFactory, backend_endpoint
from janustls.ports.srvsock import SrvsockFactory
from janustls.ports.web.port import WebFactory, WebRules, read_web_rules
from janustls.tls.policy import build_port_tls

__all__ = ["BuiltPort", "build_port", "build_ports", "PortService", "listen", "server_endpoint", "PortsHost"]


@dataclass
class BuiltPort:
    """A port ready to listen: its endpoint and the factory to listen with."""

    definition: PortDefinition
    endpoint: IStreamServerEndpoint
    factory: PortTLSFactory
    runtime: PortRuntime
    #: Set once the port listens (the status listener shows its address).
    listening: IListeningPort | None = None


def wrap_factory(
    runtime: PortRuntime, procs: Path, web: WebRules | None = None, protected: Sequence[Path] = ()
) -> PortTLSFactory:
    """The TLS factory serving one port, its application factory chosen by the port's type.

    `web`: the port's rule table (webserv ports, `read_web_rules`); `protected`: the files of
    the whole definition that are never served as pages (`Definitions.key_material`).
    """
    port = runtime.port
    inner: PortFactory
    if port.type is not PortType.WEBSERV:  # `allow =`: a refusal closes after the handshake
        runtime.access = port_access(port, procs)
    if port.type is PortType.SRVSOCK:
        assert port.handler is not None
        try:
            handler = load_callable(procs, port.handler)
        except ProcedureError as e:
            raise ConfigErrors([ConfigError(port.source, port.section, "handler", str(e))])
        inner = SrvsockFactory(runtime, handler)
    elif port.type is PortType.PROXY:
        assert port.connect is not None
        try:
            inner = ProxyFactory(runtime, backend_endpoint(runtime.reactor, port.connect))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigErrors(
                [ConfigError(port.source, port.section, "connect", f"is not a usable client endpoint: {e}")]
            )
        return ProxyTLSFactory(runtime, inner)  # its TLS layer passes the client's half-close on
    elif port.type is PortType.WEBSERV:
        assert web is not None
        inner = WebFactory(runtime, procs, web, protected=protected)
    else:
        raise ConfigErrors(
            [
                ConfigError(
                    port.source, port.section, "type", f"{port.type.value} ports are not available in this version"
                )
            ]
        )
    return PortTLSFactory(runtime, inner)


def _why(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if not isinstance(e, ValueError) or not text else text


@implementer(IStreamServerEndpoint)
class _AtListenEndpoint:
    """An endpoint parsed when it listens: a systemd socket exists only in the process
    systemd started, so `janustls check` (and a build before start) must not look for it."""

    def __init__(self, reactor: Any, description: str) -> None:
        self._reactor = reactor
        self._description = description

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        def parse_and_listen() -> Any:
            try:
                endpoint = serverFromString(reactor_or_global(self._reactor), self._description)
            except IndexError:
                raise CannotListenError(None, self._description, "no such socket was passed by systemd "
                                        "(run under socket activation, or check index=/name=)") from None  # fmt: skip
            return endpoint.listen(factory)

        return defer.maybeDeferred(parse_and_listen)


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """The server endpoint of a listen value; systemd endpoints are resolved when they listen."""
    if description.strip().lower().startswith("systemd:"):
        return _AtListenEndpoint(reactor, description)
    return serverFromString(reactor, description)  # type: ignore[no-any-return]  # Twisted's parser is unannotated


def build_port(
    port: PortDefinition,
    procs: Path,
    reactor: Any = None,
    web: Sequence[WebRuleLine] = (),
    protected: Sequence[Path] = (),
) -> BuiltPort:
    """Check one port's files and build it; raises ConfigErrors (all of this port's problems)."""
    reactor = reactor_or_global(reactor)
    errors: list[ConfigError] = []
    endpoint: IStreamServerEndpoint | None = None
    try:
        endpoint = server_endpoint(reactor, port.listen)
    except Exception as e:  # a plugin's parser may raise anything: a located error, not a traceback
        errors.append(ConfigError(port.source, port.section, "listen", f"is not a usable endpoint: {_why(e)}"))
    if endpoint is not None and port.proxy_protocol:
        endpoint = ProxyHeaderEndpoint(endpoint)  # a PROXY v1/v2 header precedes TLS
    # A web port's exception rules decide what its TLS policy leaves to the web layer: read
    # them first, so that the policy (and its Context) is built once.
    rules = read_web_rules(port, procs, web) if port.type is PortType.WEBSERV else None
    missing, refused = rules.tolerance(port) if rules is not None else (False, False)
    try:
        tls = build_port_tls(port, tolerate_missing=missing, tolerate_refused=refused)
    except ConfigErrors as e:
        errors.extend(e.errors)
        # The factory needs TLS, but the handler can still be checked, so that one run
        # of `janustls check` reports every problem of the port.
        if port.type is PortType.SRVSOCK and port.handler is not None:
            try:
                load_callable(procs, port.handler)
            except ProcedureError as h:
                errors.append(ConfigError(port.source, port.section, "handler", str(h)))
        raise ConfigErrors(errors)
    runtime = PortRuntime(port, tls, reactor)
    if port.ocsp_staple:
        runtime.stapler = stapler_for(port, tls.material.chain, reactor)
        tls.staple_source = runtime.stapler.current
    if port.ocsp is not OCSPScope.NONE:
        runtime.ocsp = OCSPChecker(port, reactor)
    try:
        factory = wrap_factory(runtime, procs, rules, protected)
    except ConfigErrors as e:
        errors.extend(e.errors)
    if errors:
        raise ConfigErrors(errors)
    assert endpoint is not None
    return BuiltPort(port, endpoint, factory, runtime)


def build_ports(definitions: Definitions, reactor: Any = None) -> list[BuiltPort]:
    errors: list[ConfigError] = []
    built: list[BuiltPort] = []
    for port in definitions.ports:
        try:
            built.append(
                build_port(
                    port, definitions.procs, reactor, definitions.web.get(port.name, ()), definitions.key_material()
                )
            )
        except ConfigErrors as e:
            errors.extend(e.errors)
    if errors:
        raise ConfigErrors(errors)
    return built


class PortsHost(Protocol):
    """What the watchers and the status listener need of a running service (`JanusService`, `WorkersService`)."""

    definitions: Definitions
    ports: list[BuiltPort]
    running: int

    #: The reactor the service was built with; None: the global one.
    @property
    def reactor(self) -> Any: ...

    def getServiceNamed(self, name: str) -> Any: ...


class PortService(service.Service):
    """One listening port as a Twisted service.

    It binds in `privilegedStartService`, before the reactor runs (and before twistd
    drops privileges), so a port that cannot listen stops the start with its error
    instead of leaving the other ports running.  `listening`: a port already opened
    (a reload opens new addresses before it swaps).
    """

    def __init__(self, built: BuiltPort, listening: IListeningPort | None = None) -> None:
        self.built = built
        self.name = built.definition.name
        self.listening: IListeningPort | None = None
        self._opened = listening
        self._binding: defer.Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        if self._opened is None and self._binding is None:
            failed: list[Failure] = []
            self._binding = self._bind()
            self._binding.addErrback(failed.append)
            if failed:
                failed[0].raiseException()

    def startService(self) -> Any:
        service.Service.startService(self)
        if self._opened is not None:
            self._listening(self._opened)
            return defer.succeed(None)
        if self._binding is None:
            self._binding = self._bind()
        return self._binding

    def _bind(self) -> defer.Deferred[None]:
        d = self.built.endpoint.listen(self.built.factory)
        return d.addCallbacks(self._listening, self._failed)

    def _listening(self, listening: IListeningPort) -> None:
        self.listening = self.built.listening = listening
        if self.built.runtime.stapler is not None:
            self.built.runtime.stapler.start()  # the port serves: its staple is fetched from now on
        port = self.built.definition
        emit(
            "janustls.port.listening",
            "port {port}: {type} listening on {address}, client_cert={mode}, {cas} CA(s)",
            port=port.name,
            type=port.type.value,
            address=str(listening.getHost()),
            mode=port.client_cert.value,
            cas=len(self.built.runtime.tls.trust.cas),
        )

    def _failed(self, failure: Failure) -> Failure:
        port = self.built.definition
        emit(
            "janustls.port.failed",
            "port {port}: cannot listen on {listen}: {error}",
            LogLevel.critical,
            port=port.name,
            listen=port.listen,
            error=failure.getErrorMessage(),
        )
        return failure

    def stopService(self) -> Any:
        service.Service.stopService(self)
        self._binding = self._opened = None  # a restart binds again
        if self.built.runtime.stapler is not None:
            self.built.runtime.stapler.stop()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            emit("janustls.port.stopped", "port {port}: stopped", port=self.name)
            return listening.stopListening()
        return None


def listen(port: PortDefinition, procs: Path | None = None, reactor: IReactorCore | IReactorTime | None = None,
           web: Sequence[WebRuleLine] = ()) -> defer.Deferred[IListeningPort]:  # fmt: skip
    """Build one port and start listening: the embedding API's shortest form.  `web`: a webserv
    port's rules, whose ON values may be callables (`WebRuleLine("ON /hi", hello)`)."""
    built = build_port(port, procs or Path.cwd(), reactor, web)

    def listening(lp: IListeningPort) -> IListeningPort:
        if built.runtime.stapler is not None:
            built.runtime.stapler.start()
        return lp

    return built.endpoint.listen(built.factory).addCallback(listening)
