"""`proxy_protocol = yes`: a PROXY v1/v2 header precedes TLS, as HAProxy in TCP mode sends it.

Any port type can sit behind a load balancer, so this is an outer wrapper around the
port's TLS factory, applied to the listening endpoint.  It reads the header before a
single byte reaches TLS, closes (and logs) a connection without a valid one, and
makes the address the header carries the peer: `getPeer()` answers it, so every
janustls log line, `Connection.peer`, identity rules and the per-client connection
limit see the real client, not the balancer.  The port's TLS protocol is built only
once the header has named the client; until then the port's handshake timeout runs
from the accept, so a balancer or client that sends nothing is cut off like any
slow client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from janustls.core.proxyproto import HeaderReader, ProxyHeader, ProxyHeaderError
from janustls.events import emit
from janustls.ports.base import PortTLSFactory, address_text

__all__ = ["ProxyHeaderProtocol", "ProxyHeaderFactory", "ProxyHeaderEndpoint"]


def _twisted_address(host: str, port: int) -> IAddress:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ProxyHeaderProtocol(ProtocolWrapper):
    """Reads the PROXY header, then builds the port's TLS protocol for the client it names."""

    factory: ProxyHeaderFactory
    transport: ITCPTransport
    wrappedProtocol: Any

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]  # the wrapped protocol comes with the header
        self._reader: HeaderReader | None = HeaderReader()
        self.header: ProxyHeader | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        runtime = self.factory.wrappedFactory.runtime
        self._timer = runtime.reactor.callLater(runtime.port.handshake_timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        runtime = self.factory.wrappedFactory.runtime
        emit(
            "janustls.handshake.timeout",
            "port {port}: {peer} sent no PROXY header in {seconds}s",
            LogLevel.warn,
            port=runtime.port.name,
            peer=address_text(self.transport.getPeer()),
            seconds=runtime.port.handshake_timeout,
        )
        self.transport.abortConnection()

    def _header_done(self, rest: bytes) -> None:
        """Build the TLS protocol for the named client: the port's limits judge it now."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inner = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if inner is None:  # over a limit: PortTLSFactory logged it
            self.transport.abortConnection()
            return
        self.wrappedProtocol = inner
        inner.makeConnection(self)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None

    def logPrefix(self) -> str:
        return self.factory.logPrefix()

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if self.wrappedProtocol is not None:
                self.wrappedProtocol.dataReceived(data)
            return  # refused: the rest is dropped while the connection closes
        try:
            outcome = reader.feed(data)
        except ProxyHeaderError as e:
            self._reader = None
            emit(
                "janustls.proxy.header_invalid",
                "port {port}: closed {peer}: {detail}",
                LogLevel.warn,
                port=self.factory.port_name,
                peer=address_text(self.transport.getPeer()),
                detail=str(e),
            )
            self.transport.abortConnection()
            return
        if outcome is None:
            return
        header, rest = outcome
        self._reader = None
        self.header = header
        if header.source is not None and header.destination is not None:
            self._peer = _twisted_address(*header.source)
            self._host = _twisted_address(*header.destination)
        emit(
            "janustls.proxy.header_received",
            "port {port}: PROXY v{version} header from {via}: client {peer}",
            LogLevel.debug,
            port=self.factory.port_name,
            peer=address_text(self.getPeer()),
            via=address_text(self.transport.getPeer()),
            version=header.version,
            local=header.local,
        )
        self._header_done(rest)

    def getPeer(self) -> IAddress:
        """The client the header names (the balancer's own address for LOCAL/UNKNOWN)."""
        return self._peer if self._peer is not None else self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self._host if self._host is not None else self.transport.getHost()

    def balancer_address(self) -> IAddress:
        """The address the connection really came from (the load balancer)."""
        peer: IAddress = self.transport.getPeer()
        return peer


class ProxyHeaderFactory(WrappingFactory):
    """Wraps a port's TLS factory, which builds its protocol once the header has arrived."""

    protocol = ProxyHeaderProtocol
    noisy = False

    def __init__(self, wrapped: PortTLSFactory) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self.port_name = wrapped.runtime.port.name

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol:  # type: ignore[override]  # addr is always given by the listening port
        return self.protocol(self)

    def logPrefix(self) -> str:
        return f"{self.wrappedFactory.logPrefix()} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """A server endpoint whose connections start with a PROXY header (wraps the real one)."""

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self.wrapped = wrapped

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        assert isinstance(protocolFactory, PortTLSFactory), "wraps a janustls port's TLS factory"
        result: defer.Deferred[IListeningPort] = self.wrapped.listen(ProxyHeaderFactory(protocolFactory))
        return result
