"""The `janustls:` endpoint's port kind: any application protocol behind a janustls port's TLS, trust and logging.

`janustls.plugin.JanusEndpointParser` parses the endpoint string and builds these.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from janustls.core.config import PortDefinition
from janustls.ports.base import PortFactory, PortProtocol, PortRuntime, PortTLSFactory
from janustls.ports.connection import Connection
from janustls.tls.policy import PortTLS

__all__ = ["JanusServerEndpoint", "connection_of"]


def connection_of(protocol: Protocol) -> Connection | None:
    """The janustls Connection behind an application protocol served by a `janustls:` endpoint."""
    tls = getattr(protocol, "transport", None)
    inner = getattr(tls, "wrappedProtocol", None)
    return getattr(inner, "connection", None)


class _AppProtocol(PortProtocol):
    """Runs the application's own protocol once the handshake has succeeded."""

    factory: _AppFactory
    app: IProtocol | None = None

    def connection_ready(self, connection: Connection) -> None:
        app = self.factory.app_factory.buildProtocol(self.transport.getPeer())
        if app is None:
            self.transport.loseConnection()
            return
        self.app = app
        app.makeConnection(self.transport)

    def bytes_received(self, data: bytes) -> None:
        if self.app is not None:
            self.app.dataReceived(data)

    def connection_ended(self, reason: Failure | None) -> None:
        if self.app is not None:
            self.app.connectionLost(reason)  # type: ignore[arg-type]  # passed on as the TLS layer gave it


class _AppFactory(PortFactory):
    protocol = _AppProtocol

    def __init__(self, runtime: PortRuntime, app_factory: IProtocolFactory) -> None:
        super().__init__(runtime)
        self.app_factory = app_factory


@implementer(IStreamServerEndpoint)
class JanusServerEndpoint:
    """A TCP endpoint whose connections get a janustls port's TLS, trust and logging."""

    def __init__(self, reactor: Any, tcp: IStreamServerEndpoint, port: PortDefinition, tls: PortTLS) -> None:
        self._reactor = reactor
        self._tcp = tcp
        self._port = port
        self._tls = tls

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        runtime = PortRuntime(self._port, self._tls, self._reactor)
        return self._tcp.listen(PortTLSFactory(runtime, _AppFactory(runtime, protocolFactory)))
