"""What every port type shares: the TLS wrapper, limits, timeouts, and logging outcomes.

A listening port is `PortTLSFactory` (Twisted's TLS wrapper, plus max_connections)
around a `PortFactory` whose protocols subclass `PortProtocol`.  Port types
(srvsock, webserv, proxy) add only what happens with the bytes after the handshake.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from janustls.core.certinfo import EMPTY_CHAIN
from janustls.core.config import ClientCertMode, PortDefinition
from janustls.core.reasons import Reason, Refusal
from janustls.events import emit
from janustls.ports.connection import Connection
from janustls.ports.refusals import log_refusal
from janustls.tls import _openssl
from janustls.tls.midconn import CertificateRequest, can_request
from janustls.tls.policy import PortTLS
from janustls.tls.protocol import PortTLSProtocol, failure_text, refusal_for_failure, refused_leaf

__all__ = ["PortFactory", "PortProtocol", "PortTLSFactory", "PortRuntime"]


class HandshakeDeadlines:
    """Handshake timeouts of a port's connections, kept by one timer instead of one each.

    A connection is added when it opens and removed when its handshake completes (a
    dict insert and delete); a sweep a few times per timeout aborts the late ones, so
    a client gets between `timeout` and 1.25 x `timeout`.
    """

    def __init__(self, reactor: IReactorTime, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.pending: dict[PortProtocol, float] = {}
        self._loop: LoopingCall | None = None

    def add(self, protocol: PortProtocol, now: float) -> None:
        """`now`: the reactor's seconds, which the caller has read already.

        (`PortProtocol.connectionMade` does this in place while the sweep runs.)"""
        self.pending[protocol] = now + self.timeout
        if self._loop is None:
            self.start(now)

    def start(self, now: float) -> None:
        """Start the sweep (it stops itself when nothing is pending)."""
        if self._loop is None:
            self._loop = LoopingCall(self._sweep)
            self._loop.clock = self.reactor
            self._loop.start(min(1.0, self.timeout / 4), now=False)

    def discard(self, protocol: PortProtocol) -> None:
        """(`PortProtocol` does this in place: `pending.pop(protocol, None)`.)"""
        self.pending.pop(protocol, None)

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        late = [p for p, deadline in self.pending.items() if deadline <= now]
        for protocol in late:
            del self.pending[protocol]
            protocol._handshake_expired()
        if not self.pending and self._loop is not None:
            self._loop.stop()
            self._loop = None


class PortRuntime:
    """A port's live state shared by its connections: definition, TLS policy, reactor, counters."""

    def __init__(self, port: PortDefinition, tls: PortTLS, reactor: IReactorTime) -> None:
        self.port = port
        self.tls = tls
        self.reactor = reactor
        self.deadlines = HandshakeDeadlines(reactor, port.handshake_timeout)
        self.accepted = 0
        self.refused = 0
        #: The port's `allow =` gate (`janustls.ports.access.PortAccess`); web ports answer FORBIDDEN instead.
        self.access: Any = None
        #: The port's OCSP policy (`janustls.ops.ocspcheck.OCSPChecker`) when `ocsp` is on.
        self.ocsp: Any = None
        #: The port's OCSP stapler (`janustls.ops.staple.Stapler`) when `ocsp_staple = yes`.
        self.stapler: Any = None


def address_text(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


@implementer(IHandshakeListener)
class PortProtocol(Protocol):
    """The protocol inside TLS: times the handshake, records the outcome, then hands over."""

    factory: PortFactory
    transport: PortTLSProtocol
    connection: Connection | None = None

    _deadlines: HandshakeDeadlines | None = None
    _bytes_in = 0
    _idle_timer: IDelayedCall | None = None
    #: The end of a connection that never served was logged already (timeout, resumed refusal).
    _outcome_logged = False
    _request: CertificateRequest | None = None
    #: Application bytes that arrived while the connection waits for an OCSP verdict.
    _held: list[bytes] | None = None
    _gone = False
    #: Whether any bytes from the client count as progress for idle_timeout.  Port types
    #: with units of their own (a handler's completed read, a whole HTTP request) say
    #: False and call `progress()` themselves, so a client trickling bytes gains nothing.
    bytes_are_progress = True

    def connectionMade(self) -> None:
        rt = self.factory.runtime
        self._started = now = rt.reactor.seconds()
        self._deadlines = deadlines = rt.deadlines
        deadlines.pending[self] = now + deadlines.timeout  # HandshakeDeadlines.add, in place
        if deadlines._loop is None:
            deadlines.start(now)

    # -- the handshake ---------------------------------------------------------------

    def _handshake_expired(self) -> None:
        self._deadlines = None
        self._outcome_logged = True
        rt = self.factory.runtime
        emit(
            "janustls.handshake.timeout",
            "port {port}: {peer} did not finish its handshake in {seconds}s",
            LogLevel.warn,
            port=rt.port.name,
            peer=address_text(self.peer_address()),
            seconds=rt.port.handshake_timeout,
        )
        self.transport.abortConnection()

    #: The address the protocol was built for (`PortFactory.buildProtocol`): the peer's, as
    #: `getPeer()` answers it (the PROXY header's on accept_proxy ports), without a new address object.
    _addr: IAddress | None = None

    def peer_address(self) -> IAddress:
        if self._addr is not None:
            return self._addr
        peer: IAddress = self.transport.getPeer()
        return peer

    def peer_text(self) -> str:
        """The client's address as logs show it (host:port, [v6]:port)."""
        return address_text(self.peer_address())

    def handshakeCompleted(self) -> None:
        deadlines = self._deadlines
        if deadlines is not None:
            deadlines.pending.pop(self, None)
            self._deadlines = None
        rt = self.factory.runtime
        transport = self.transport
        handle: SSL.Connection = transport.getHandle()
        chain = rt.tls.client_chain(handle, transport)  # shared by connections with the same chain
        certs: tuple[x509.Certificate, ...] = chain.certificates
        if not certs and self._refuse_resumed(rt):
            return
        if certs and rt.ocsp is not None:
            verdict = rt.ocsp.judge(certs)
            if isinstance(verdict, defer.Deferred):
                # Held, not blocked: the reactor serves others until the responder answers.
                self._held = []
                self.transport.pauseProducing()  # what is already read waits in _held; no more is read
                verdict.addCallback(self._ocsp_judged, chain, handle)
                return
            if verdict is not None:
                if not self._left_to_web_layer(verdict):
                    self._refuse_after_handshake(verdict)
                    return
                chain, certs = EMPTY_CHAIN, ()
        self._admit(chain, handle, certs)

    def _ocsp_judged(self, refusal: Refusal | None, chain: Any, handle: SSL.Connection) -> None:
        held, self._held = self._held or [], None
        if self._gone or self.transport.disconnecting:
            return
        if refusal is not None:
            if not self._left_to_web_layer(refusal):
                self._refuse_after_handshake(refusal)
                return
            chain = EMPTY_CHAIN
        self.transport.resumeProducing()
        self._admit(chain, handle)
        for data in held:
            if self._gone:
                break
            self.dataReceived(data)

    def _left_to_web_layer(self, refusal: Refusal) -> bool:
        """An OCSP refusal on a port whose web layer answers refused certificates (`ON
        SSLCERTERR`): recorded as the TLS layer records any other refused certificate, and
        the connection goes on without a verified certificate, so its requests get the
        SSLCERTERR handler (which logs the refusal) exactly as for an expired or unknown one."""
        if not self.factory.runtime.tls.tolerate_refused:
            return False
        self.transport.refusal = refusal
        return True

    def _refuse_after_handshake(self, refusal: Refusal) -> None:
        """A completed handshake whose certificate the port refuses now (OCSP): logged, closed."""
        self.transport.refusal = refusal
        self._log_failed_handshake(None)
        self._outcome_logged = True
        self.transport.abortConnection()

    def _admit(self, chain: Any, handle: SSL.Connection, certs: tuple[x509.Certificate, ...] | None = None) -> None:
        """`certs`: the chain's certificates, when the caller has read them."""
        rt = self.factory.runtime
        if certs is None:
            certs = chain.certificates
        rt.tls.trust.count_signed(certs)
        rt.accepted += 1
        version, cipher = _openssl.negotiated(handle)
        levels = len(certs)
        has_cert = levels > 0
        conn = Connection(
            self,
            chain,
            tls_version=version,
            cipher=cipher,
            peer=self._addr if self._addr is not None else self.transport.getPeer(),  # peer_address(), in place
            port_name=rt.port.name,
            # A resumed session that carries a certificate was asked in its first life.
            asked=has_cert or rt.port.client_cert is not ClientCertMode.NONE,
        )
        # Without an idle timeout the connection's reads and writes need not report progress.
        conn._progress = rt.port.idle_timeout > 0
        self.connection = conn
        self._peer_text = address_text(conn.peer)
        emit(
            "janustls.conn.accepted",
            "port {port}: {peer} connected with {version} {cipher}, client {subject}",
            port=rt.port.name,
            peer=self._peer_text,
            version=version,
            cipher=cipher,
            subject=chain.info("SUBJECT") if has_cert else None,
            levels=levels,
        )
        if rt.port.idle_timeout > 0:
            self._last_activity = rt.reactor.seconds()
            self._idle_timer = rt.reactor.callLater(rt.port.idle_timeout, self._idle_check)
        if rt.access is not None:  # refused: logged and closed; admitted: connection_ready
            rt.access.admit(self, conn, self.connection_ready)
            return
        self.connection_ready(conn)

    def _refuse_resumed(self, rt: PortRuntime) -> bool:
        """A handshake that completed without a usable certificate where one is needed.

        Only a resumed session gets here (a full handshake that fails verification never
        completes): its certificate is revoked or expired since, no longer chains to a
        CA of the port, or the session predates `client_cert = require`.  Closed and
        logged like any refusal, unless the web layer answers (SSLCERTERR/SSLNOCERTERR).
        """
        refusal = self.transport.refusal
        if refusal is not None:
            if rt.tls.tolerate_refused:
                return False
        elif rt.port.client_cert is ClientCertMode.REQUIRE and not rt.tls.tolerate_missing:
            refusal = Refusal(
                Reason.NO_CERTIFICATE, None, None, "a resumed session without a certificate on a require port"
            )
        else:
            return False
        self.transport.refusal = refusal
        self._log_failed_handshake(None)
        self._outcome_logged = True
        self.transport.abortConnection()
        return True

    # -- after the handshake -------------------------------------------------------------

    def connection_ready(self, connection: Connection) -> None:
        """Subclasses start serving here."""

    def dataReceived(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        self._bytes_in += len(data)
        if self.bytes_are_progress and self._idle_timer is not None:
            self._last_activity = self.factory.runtime.reactor.seconds()
        self.bytes_received(data)

    def progress(self) -> None:
        """A unit of application progress: idle_timeout counts from the last one.

        Called for a completed read of a srvsock handler, a whole web request received
        or answered, output accepted below the high-water mark, and the client taking
        its pending output (the TLS protocol calls it when the output drains).  Nothing
        counts while the client's unsent output is above the high-water mark.
        """
        if self._idle_timer is not None and not self.transport.output_full:
            self._last_activity = self.factory.runtime.reactor.seconds()

    def bytes_received(self, data: bytes) -> None:
        """Subclasses take the client's application bytes here."""

    def send(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self.progress()
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection: after what is written, forcibly once the close is held up.

        The one way every limit and timeout ends a connection; the TLS protocol's
        `loseConnection` (which twisted.web's channel also calls) lets go of the
        application's producer and aborts a client that takes none of its remaining
        output, or does not answer the TLS close, within `CLOSE_GRACE` seconds.
        """
        self.transport.loseConnection()

    def drained(self) -> defer.Deferred[None]:
        """Fires when the client's unsent output is under the high-water mark."""
        return self.transport.drained()

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def request_certificate(self, require: bool = False) -> defer.Deferred[list[x509.Certificate]]:
        """Ask the client for a certificate mid-connection (see `janustls.tls.midconn`)."""
        rt = self.factory.runtime
        self._request = CertificateRequest(
            self.transport,
            rt.tls,
            require=require,
            timeout=rt.port.request_timeout,
            reactor=rt.reactor,
            judge=rt.ocsp.judge if rt.ocsp is not None else None,
            port=rt.port.name,
            peer=self.peer_text(),
        )
        return self._request.start()

    def can_request_certificate(self) -> tuple[bool, str]:
        return can_request(self.transport, self.transport.getHandle())

    def _idle_check(self) -> None:
        rt = self.factory.runtime
        idle = rt.reactor.seconds() - self._last_activity
        if idle < rt.port.idle_timeout:
            self._idle_timer = rt.reactor.callLater(rt.port.idle_timeout - idle, self._idle_check)
            return
        self._idle_timer = None
        emit(
            "janustls.conn.idle_timeout",
            "port {port}: closing {peer} after {seconds}s without traffic",
            port=rt.port.name,
            peer=address_text(self.peer_address()),
            seconds=rt.port.idle_timeout,
        )
        self.close()

    # -- the end ---------------------------------------------------------------------------

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # Twisted's own default is None
        self._gone = True
        self._held = None
        if self._deadlines is not None:
            self._deadlines.pending.pop(self, None)
            self._deadlines = None
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._request is not None:
            self._request.lost(reason)
            self._request = None
        rt = self.factory.runtime
        if self.connection is None:
            if not self._outcome_logged:
                self._log_failed_handshake(reason)
        else:
            emit(
                "janustls.conn.closed",
                "port {port}: {peer} disconnected after {seconds:.3f}s",
                LogLevel.debug,
                port=rt.port.name,
                peer=self._peer_text,
                seconds=rt.reactor.seconds() - self._started,
                bytes_in=self._bytes_in,
                bytes_out=getattr(self.transport, "bytes_out", 0),
            )
        self.connection_ended(reason)

    def connection_ended(self, reason: Failure | None) -> None:
        """Subclasses release what they hold here."""

    def _log_failed_handshake(self, reason: Failure | None) -> None:
        rt = self.factory.runtime
        peer = address_text(self.peer_address())
        refusal = refusal_for_failure(self.transport, reason)
        if refusal is not None:
            rt.refused += 1
            log_refusal(rt.port.name, peer, refusal, refused_leaf(self.transport))
            return
        if reason is not None and isinstance(reason.value, SSL.Error):
            emit(
                "janustls.handshake.failed",
                "port {port}: handshake with {peer} failed: {detail}",
                LogLevel.warn,
                port=rt.port.name,
                peer=peer,
                detail=failure_text(reason),
            )
            return
        emit(
            "janustls.handshake.abandoned",
            "port {port}: {peer} closed the connection during the handshake",
            LogLevel.debug,
            port=rt.port.name,
            peer=peer,
        )


class PortFactory(Factory):
    """Builds a port's protocols; holds the runtime they share."""

    protocol: type[PortProtocol] = PortProtocol  # type: ignore[assignment]  # Factory.protocol is typed as an IProtocol factory callable

    def __init__(self, runtime: PortRuntime) -> None:
        self.runtime = runtime

    def buildProtocol(self, addr: IAddress | None) -> PortProtocol:  # type: ignore[override]  # always a PortProtocol
        p = self.protocol()
        p.factory = self
        p._addr = addr
        return p

    def doStart(self) -> None:  # no "Starting factory" chatter per port
        self.numPorts += 1

    def doStop(self) -> None:
        self.numPorts -= 1


@implementer(IOpenSSLServerConnectionCreator)
class _CurrentTLS:
    """The port's TLS policy as of each new connection.

    Twisted binds the creator's method when the factory is made; going through the
    factory's current runtime lets a reload (`PortTLSFactory.adopt`) swap the Context
    for new connections while established ones keep theirs.
    """

    def __init__(self, factory: PortTLSFactory) -> None:
        self._factory = factory

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self._factory.runtime.tls.serverConnectionForTLS(tlsProtocol)


class PortTLSFactory(TLSMemoryBIOFactory):
    """Twisted's TLS wrapper for one port, refusing connections past max_connections
    and max_connections_per_client."""

    noisy = False
    protocol = PortTLSProtocol

    def __init__(self, runtime: PortRuntime, wrapped: PortFactory) -> None:
        super().__init__(_CurrentTLS(self), False, wrapped)
        self.runtime = runtime
        self._per_client: dict[str, int] = {}
        #: Read by the TLS protocol as it starts (one attribute, not a walk to the port definition).
        self.write_buffer_high = runtime.port.write_buffer_high
        # Ports that ask at the handshake never ask again, so never need the ClientHello.
        self.keep_client_hello = runtime.port.client_cert is ClientCertMode.NONE

    def adopt(self, new: PortTLSFactory) -> None:
        """Serve new connections with a rebuilt port's TLS policy, application factory and
        limits (a reload); established connections keep what they negotiated."""
        old_inner = self.wrappedFactory
        new.wrappedFactory.doStart()
        new.runtime.accepted += self.runtime.accepted
        new.runtime.refused += self.runtime.refused
        self.runtime = new.runtime
        self.wrappedFactory = new.wrappedFactory
        self.keep_client_hello = new.keep_client_hello
        self.write_buffer_high = new.write_buffer_high
        old_inner.doStop()

    def _over_client_limit(self, addr: IAddress) -> bool:
        limit = self.runtime.port.max_connections_per_client
        if limit is None:
            return False
        host = str(getattr(addr, "host", addr))
        if self._per_client.get(host, 0) >= limit:
            emit(
                "janustls.conn.limit",
                "port {port}: refused {peer}: {limit} connections already open from it (max_connections_per_client)",
                LogLevel.warn,
                port=self.runtime.port.name,
                peer=address_text(addr),
                limit=limit,
                limit_key="max_connections_per_client",
            )
            return True
        return False

    def registerProtocol(self, protocol: Any) -> None:
        # Twisted may register a TLS protocol more than once (makeConnection, then
        # the wrapper): count each connection once; and only where a limit needs it.
        # (WrappingFactory.registerProtocol is `self.protocols[p] = 1`; done here in place.)
        protocols = self.protocols
        if protocol in protocols:
            return
        protocols[protocol] = 1
        if self.runtime.port.max_connections_per_client is not None:
            host = str(getattr(protocol.getPeer(), "host", ""))
            self._per_client[host] = self._per_client.get(host, 0) + 1

    def unregisterProtocol(self, protocol: Any) -> None:
        # (WrappingFactory.unregisterProtocol deletes the entry; done here in place.)
        if self.protocols.pop(protocol, None) is None:
            return
        if not self._per_client:
            return
        host = str(getattr(protocol.getPeer(), "host", ""))
        left = self._per_client.get(host, 0) - 1
        if left > 0:
            self._per_client[host] = left
        else:
            self._per_client.pop(host, None)

    def buildProtocol(self, addr: IAddress) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]  # None refuses the connection, as Twisted allows
        port = self.runtime.port
        if port.max_connections_per_client is not None and self._over_client_limit(addr):
            return None
        limit = port.max_connections
        if limit is not None and len(self.protocols) >= limit:
            emit(
                "janustls.conn.limit",
                "port {port}: refused {peer}: {limit} connections already open (max_connections)",
                LogLevel.warn,
                port=self.runtime.port.name,
                peer=address_text(addr),
                limit=limit,
            )
            return None
        wrapped = self.wrappedFactory
        if type(wrapped).buildProtocol is PortFactory.buildProtocol:  # the usual case, in place
            inner = wrapped.protocol()
            inner.factory = wrapped
            inner._addr = addr
        else:
            inner = wrapped.buildProtocol(addr)
        return self.protocol(self, inner)  # WrappingFactory.buildProtocol

    def logPrefix(self) -> str:
        return f"janustls:{self.runtime.port.name}"
