"""proxy ports: terminate mutual TLS, connect to a backend, and pass the bytes both ways.

After the handshake the port connects to `connect =` (any Twisted client endpoint:
plain TCP, or TLS to the backend) within `connect_timeout`, optionally sends a PROXY
v2 header with the client's address and verified identity (`forward_identity =
proxy-v2`), then relays.  Flow control is Twisted's producer/consumer pairing in
both directions: each side's transport is the producer registered on the other
side's transport, so a slow reader pauses the fast writer and at most the
transports' own buffers (plus `PENDING_LIMIT` while connecting) are held per
connection.

Closing: either side ending closes the other after its pending bytes are written.
Half-close both ways: a backend that sends FIN gets the client a TLS close_notify while
the client's remaining bytes still reach the backend; a client's close_notify becomes a
FIN to the backend (close_notify to a TLS backend) while the backend's answer still
reaches the client (`ProxyTLSProtocol`).
A backend that is down or slow: the client is closed cleanly (close_notify) and
`janustls.proxy.backend_failed` says why; the port keeps serving.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from janustls.core.config import ForwardIdentity
from janustls.core.proxyproto import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_TYPE_AUTHORITY,
    VERIFY_NO_CERTIFICATE,
    SSLInfo,
    authority_from_sni,
    build_v2,
)
from janustls.events import emit
from janustls.ports.base import PortFactory, PortProtocol, PortRuntime, PortTLSFactory, address_text
from janustls.ports.connection import Connection
from janustls.tls import _openssl
from janustls.tls._twisted import HalfCloseTLSProtocol
from janustls.tls.protocol import PortTLSProtocol, failure_text

__all__ = [
    "PENDING_LIMIT",
    "ProxyFactory",
    "ProxyProtocol",
    "ProxyTLSFactory",
    "ProxyTLSProtocol",
    "backend_endpoint",
    "identity_header",
]

#: Client bytes held while the backend connection is being made; past it the client is paused.
PENDING_LIMIT = 262144
#: Seconds a client may take to finish closing once the backend is gone, before it is cut off.
CLOSE_GRACE = 10.0

# OpenSSL's short names for signature algorithms, as HAProxy puts them in PP2_SUBTYPE_SSL_SIG_ALG.
_SIG_NAMES = {
    "sha256WithRSAEncryption": "RSA-SHA256",
    "sha384WithRSAEncryption": "RSA-SHA384",
    "sha512WithRSAEncryption": "RSA-SHA512",
    "sha1WithRSAEncryption": "RSA-SHA1",
    "RSASSA-PSS": "RSASSA-PSS",
    "ed25519": "ED25519",
    "ed448": "ED448",
}


def _sig_alg(cert: x509.Certificate) -> str:
    name = cert.signature_algorithm_oid._name
    return _SIG_NAMES.get(name, name)


def _key_alg(cert: x509.Certificate) -> str:
    """HAProxy's form: the key type and its size, e.g. RSA2048, EC256."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC{key.curve.key_size}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ED448"
    return type(key).__name__


def _host_port(address: IAddress) -> tuple[str, int] | None:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    return None


def identity_header(
    connection: Connection,
    source: IAddress,
    destination: IAddress,
    *,
    server_cert: x509.Certificate,
    resumed: bool,
    authority: bytes | None,
) -> bytes:
    """The PROXY v2 header for one client: its address and PP2_TYPE_SSL with what TLS verified.

    `verify` is 0 only when a certificate was presented and verified (the spec's
    meaning); CERT_CONN says it came on this connection, CERT_SESS on its session.
    SIG_ALG/KEY_ALG describe the certificate janustls presented, as HAProxy sends them.
    """
    leaf = connection.certificate()
    client = PP2_CLIENT_SSL
    if leaf is not None:
        client |= PP2_CLIENT_CERT_SESS if resumed else PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    ssl = SSLInfo(
        client=client,
        verify=0 if leaf is not None else VERIFY_NO_CERTIFICATE,
        version=connection.tls_version,
        cn=connection.cert_info("CN") if leaf is not None else None,
        cipher=connection.cipher or None,
        sig_alg=_sig_alg(server_cert),
        key_alg=_key_alg(server_cert),
        client_cert=leaf.public_bytes(Encoding.DER) if leaf is not None else None,
    )
    tlvs = [(PP2_TYPE_AUTHORITY, authority)] if authority else []
    return build_v2(_host_port(source), _host_port(destination), ssl=ssl, tlvs=tlvs)


def backend_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """The backend's endpoint; raises ValueError (and friends) for a bad `connect =`."""
    return clientFromString(reactor, description)  # type: ignore[no-any-return]  # Twisted's parser is unannotated


def _cause(failure: Failure, timeout: float) -> str:
    """A short, stable text for why the backend connection failed."""
    e = failure.value
    if isinstance(e, (defer.TimeoutError, defer.CancelledError, error.TimeoutError, error.ConnectingCancelledError)):
        return f"no connection within {timeout:g}s (connect_timeout)"
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, error.DNSLookupError):
        return f"cannot resolve the backend's name: {e}"
    return failure.getErrorMessage() or type(e).__name__


@implementer(IPushProducer)
class _ClientReading:
    """The client's reading as a producer registered on the backend transport."""

    def __init__(self, front: ProxyProtocol) -> None:
        self.front = front

    def pauseProducing(self) -> None:
        self.front._pause_client("backend")

    def resumeProducing(self) -> None:
        self.front._resume_client("backend")

    def stopProducing(self) -> None:
        self.front.close()


@implementer(IHalfCloseableProtocol)
class _Backend(Protocol):
    """The connection to the backend; everything it sees goes to its front protocol."""

    # TCP or TLS, a transport and a consumer: no one Twisted interface says both
    transport: Any

    def __init__(self, front: ProxyProtocol) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front._backend_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.front._from_backend(data)

    def readConnectionLost(self) -> None:
        self.front._backend_eof()

    def writeConnectionLost(self) -> None:
        """Our half-close reached the backend; nothing to do."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # Twisted's own default is None
        self.front._backend_lost(reason)


class _BackendFactory(Factory):
    """Makes the one backend protocol of a client; quiet (no "Starting factory" per connection)."""

    noisy = False

    def __init__(self, front: ProxyProtocol) -> None:
        self.front = front

    def buildProtocol(self, addr: IAddress | None) -> _Backend:
        return _Backend(self.front)


@implementer(IHalfCloseableProtocol)
class ProxyProtocol(PortProtocol):
    """One client of a proxy port and its backend connection."""

    factory: ProxyFactory

    backend: _Backend | None = None
    _connecting: defer.Deferred[Any] | None = None
    _client_gone = False
    _backend_gone = False
    _backend_ended = False
    _client_eof = False
    _closing = False
    _abort_timer: Any = None
    _cause = "client closed"

    def connection_ready(self, connection: Connection) -> None:
        rt = self.factory.runtime
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._paused_for: set[str] = set()
        self._up = self._down = 0
        self._connect_started = rt.reactor.seconds()
        d = self.factory.endpoint.connect(_BackendFactory(self))
        d.addTimeout(rt.port.connect_timeout, rt.reactor)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed)

    # -- connecting -----------------------------------------------------------------------

    def _backend_made(self, backend: _Backend) -> None:
        """The backend transport exists (TCP is up; a TLS backend still handshakes, writes wait)."""
        self.backend = backend
        if self._client_gone:
            backend.transport.loseConnection()
            return
        assert self.connection is not None
        rt = self.factory.runtime
        transport = backend.transport
        assert transport is not None
        if rt.port.forward_identity is ForwardIdentity.PROXY_V2:
            handle = self.transport.getHandle()
            authority, why = authority_from_sni(handle.get_servername())
            if why is not None:
                emit("janustls.proxy.bad_server_name", "port {port}: {peer} sent a {detail}; forwarded without PP2_TYPE_AUTHORITY",
                     LogLevel.warn, port=rt.port.name, peer=address_text(self.peer_address()), detail=why)  # fmt: skip
            transport.write(
                identity_header(
                    self.connection,
                    self.peer_address(),
                    self.transport.getHost(),
                    server_cert=rt.tls.material.leaf,
                    resumed=_openssl.session_reused(handle),
                    authority=authority,
                )
            )
        if self._pending:
            transport.writeSequence(self._pending)
            self._pending, self._pending_size = [], 0
        # Flow control both ways: each transport is the other's producer.
        transport.registerProducer(_ClientReading(self), True)
        self.transport.registerProducer(transport, True)
        self._resume_client("connecting")
        if self._client_eof:
            self._end_backend_writes()

    def _connected(self, backend: _Backend) -> None:
        self._connecting = None
        if self._client_gone:
            return
        rt = self.factory.runtime
        emit(
            "janustls.proxy.connected",
            "port {port}: {peer} ({subject}) connected to backend {backend} in {seconds:.3f}s",
            port=rt.port.name,
            peer=address_text(self.peer_address()),
            subject=self.connection.cert_info("SUBJECT") if self.connection and self.connection.cert_levels() else None,
            backend=rt.port.connect,
            identity=rt.port.forward_identity.value,
            seconds=rt.reactor.seconds() - self._connect_started,
        )

    def _backend_failed(self, cause: str) -> None:
        """The backend could not be reached or its TLS failed: logged, the client closed."""
        rt = self.factory.runtime
        self._cause = f"backend failed: {cause}"
        emit(
            "janustls.proxy.backend_failed",
            "port {port}: closing {peer}: backend {backend}: {cause}",
            LogLevel.warn,
            port=rt.port.name,
            peer=address_text(self.peer_address()),
            backend=rt.port.connect,
            cause=cause,
            seconds=rt.reactor.seconds() - self._connect_started,
        )

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._client_gone and failure.check(defer.CancelledError, error.ConnectingCancelledError):
            return  # the client left first; connection_ended has logged it
        rt = self.factory.runtime
        self._backend_failed(_cause(failure, rt.port.connect_timeout))
        self._pending, self._pending_size = [], 0
        self.close()

    # -- client -> backend ------------------------------------------------------------------

    def bytes_received(self, data: bytes) -> None:
        self._up += len(data)
        backend = self.backend
        if backend is not None and backend.transport is not None:
            if not self._backend_gone:
                backend.transport.write(data)
            return
        # Not connected yet: hold a bounded amount, then stop reading the client.
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= PENDING_LIMIT:
            self._pause_client("connecting")

    def _pause_client(self, why: str) -> None:
        if not self._paused_for and not self._client_gone:
            self.pause_reading()
        self._paused_for.add(why)

    def _resume_client(self, why: str) -> None:
        if why not in self._paused_for:
            return
        self._paused_for.discard(why)
        if not self._paused_for and not self._client_gone:
            self.resume_reading()

    def readConnectionLost(self) -> None:
        """The client sent close_notify: nothing more comes from it; the backend may still answer."""
        self._client_eof = True
        self._resume_client("connecting")
        if self.backend is not None:
            self._end_backend_writes()

    def _end_backend_writes(self) -> None:
        """Pass the client's end of stream on: a FIN to a TCP backend, close_notify to a TLS one."""
        transport = self.backend.transport if self.backend is not None else None
        if transport is None or self._backend_gone:
            return
        transport.unregisterProducer()
        if isinstance(transport, TLSMemoryBIOProtocol) or not hasattr(transport, "loseWriteConnection"):
            transport.loseConnection()  # TLS: close_notify, then it still reads until the backend's
        else:
            transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        """Not called: the TLS layer never half-closes our writing."""

    # -- backend -> client ------------------------------------------------------------------

    def _from_backend(self, data: bytes) -> None:
        self._down += len(data)
        if not self._client_gone:
            self.send(data)

    def _backend_eof(self) -> None:
        """The backend half-closed: end the client's stream, keep relaying what the client sends."""
        self._backend_ended = True
        self._cause = "backend closed"
        self._close_client()

    def _backend_lost(self, reason: Failure | None) -> None:
        self._backend_gone = True
        if self._client_gone:
            return
        if reason is not None and reason.check(SSL.Error):
            # A TLS backend that failed its handshake (untrusted, wrong name): as if down.
            self._backend_failed(f"TLS with the backend failed: {failure_text(reason)}")
        elif reason is not None and not reason.check(error.ConnectionDone):
            self._cause = f"backend lost: {reason.getErrorMessage()}"
        elif not self._backend_ended:
            self._cause = "backend closed"
        self._close_client()
        self._abort_later()

    def _close_client(self) -> None:
        if self._closing or self._client_gone:
            return
        self._closing = True
        self.transport.unregisterProducer()
        PortProtocol.close(self)

    def _abort_later(self) -> None:
        """Nothing more will come from the backend: a client that does not finish the TLS
        close (or does not read what is left) is cut off after CLOSE_GRACE seconds."""
        if self._client_gone or self._abort_timer is not None:
            return
        self._abort_timer = self.factory.runtime.reactor.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client (after its pending bytes) and, through connection_ended, the backend.

        Also the idle timeout's way out: a client that then neither reads nor answers the
        close_notify is cut off after CLOSE_GRACE seconds, so nothing lingers.
        """
        self._close_client()
        self._abort_later()

    def connection_ended(self, reason: Failure | None) -> None:
        self._client_gone = True
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        if self.connection is None:
            return  # the handshake never finished: base has logged it
        if self._connecting is not None and self.backend is None:
            self._connecting.cancel()
        backend = self.backend
        if backend is not None and backend.transport is not None and not self._backend_gone:
            backend.transport.unregisterProducer()
            backend.transport.loseConnection()
        if reason is not None and not reason.check(error.ConnectionDone) and self._cause == "client closed":
            self._cause = f"client lost: {reason.getErrorMessage()}"
        rt = self.factory.runtime
        emit(
            "janustls.proxy.closed",
            "port {port}: {peer} done ({cause}): {up} bytes to the backend, {down} to the client",
            port=rt.port.name,
            peer=address_text(self.connection.peer),
            cause=self._cause,
            up=self._up,
            down=self._down,
            seconds=rt.reactor.seconds() - self._started,
        )


class ProxyTLSProtocol(HalfCloseTLSProtocol, PortTLSProtocol):
    """Twisted's TLS protocol, except that the client's close_notify ends only its direction.

    TLS 1.3 (and OpenSSL for 1.2) lets a peer that sent close_notify keep reading; Go's
    `tls.Conn.CloseWrite` and ghostunnel use it as TCP's half-close.  Twisted answers a
    close_notify by closing both ways, losing what the backend still has to say; here
    the application hears `readConnectionLost` and the connection closes when it says
    so (`janustls.tls._twisted.HalfCloseTLSProtocol`).
    """

    #: A proxy's close may leave the client's direction relaying: it forces its own
    #: closes (`ProxyProtocol._abort_later`, CLOSE_GRACE of this module).
    close_grace = None

    def half_close_target(self) -> Any:
        wrapped = self.wrappedProtocol
        if not isinstance(wrapped, ProxyProtocol) or wrapped.connection is None:
            return None
        return wrapped


class ProxyTLSFactory(PortTLSFactory):
    """A proxy port's TLS wrapper: max_connections as every port, the half-closing protocol."""

    protocol = ProxyTLSProtocol


class ProxyFactory(PortFactory):
    protocol = ProxyProtocol

    def __init__(self, runtime: PortRuntime, endpoint: IStreamClientEndpoint) -> None:
        super().__init__(runtime)
        self.endpoint = endpoint
