"""A pyOpenSSL Context per port, the connection creator Twisted calls, and the verify callback.

The creator holds the port's current Context; replacing it (a reload) affects only
new connections, because pyOpenSSL forbids changing a Context once it has been used.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IOpenSSLServerConnectionCreator, IPushProducer
from twisted.protocols.tls import TLSMemoryBIOProtocol, _ProducerMembrane
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from janustls import _openssl
from janustls.certinfo import EMPTY_CHAIN, CertChain
from janustls.clienthello import MAX_HELLO, ClientHello, parse_client_hello
from janustls.config import DEFAULT_WRITE_BUFFER_HIGH, ClientCertMode, CRLCheck, CRLExpired, PortDefinition
from janustls.errors import ConfigError, ConfigErrors, MaterialError
from janustls.events import emit
from janustls.materials import ServerMaterial, load_server_material
from janustls.reasons import Reason, Refusal, reason_for_verify_error
from janustls.trust import PortTrust, load_port_trust

__all__ = [
    "PortTLS", "PortTLSProtocol", "build_port_tls", "refusal_for_failure", "refused_leaf",
    "DEFAULT_CIPHERS", "CLOSE_GRACE", "WRITE_BUFFER_HIGH",
]  # fmt: skip

#: AEAD suites with forward secrecy only (TLS 1.2; TLS 1.3 suites are all AEAD).
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_VERIFY_MODES = {
    ClientCertMode.NONE: SSL.VERIFY_NONE,
    ClientCertMode.REQUEST: SSL.VERIFY_PEER,
    ClientCertMode.REQUIRE: SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}
_CHECK_CACHE_SIZE = 2048
#: X509_V_ERR_CRL_HAS_EXPIRED: the one error `crl_expired = tolerate` overrides.
CRL_HAS_EXPIRED = 12

#: Unsent output (bytes, per connection) above which janustls stops reading from the client
#: and pauses the application's producer, until the client has taken all of it.
WRITE_BUFFER_HIGH = DEFAULT_WRITE_BUFFER_HIGH  # the port key write_buffer_high
#: Seconds a closing connection may go without the client taking any of its remaining
#: output (or answering the TLS close) before it is aborted.
CLOSE_GRACE = 5.0


@implementer(IPushProducer)
class _OutputGate:
    """Registered with the socket for the connection's whole life: the socket's own
    back-pressure (unsent output above its buffer size, drained again), passed to the TLS
    protocol, which stops reading from the client and pauses the application's producer."""

    __slots__ = ("tls",)

    def __init__(self, tls: PortTLSProtocol) -> None:
        self.tls = tls

    def pauseProducing(self) -> None:
        self.tls._socket_over = True
        self.tls._check_output()

    def resumeProducing(self) -> None:
        self.tls._socket_over = False
        self.tls._output_drained()

    def stopProducing(self) -> None:
        self.tls._output_stopped()


class PortTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, plus what janustls needs to know about the handshake.

    `refusal`: the first refusal the verify callback recorded, logged when the
    handshake fails instead of a bare alert.  `after_receive`: called after OpenSSL
    has processed each batch of bytes (a mid-connection request watches for the
    client's answer).  The ClientHello is kept, unparsed, only on ports that do not
    ask at the handshake, so `client_hello()` can tell whether the client may be
    asked later.
    """

    refusal: Refusal | None = None
    #: The client certificate's DER, from the verify callback to `client_chain` (then dropped).
    leaf_der: bytes | None = None
    after_receive: Callable[[], None] | None = None
    _hello: bytes | None = None
    _hello_parsed: ClientHello | None = None
    _buffers_released = False

    #: Why reading from the client is paused ("app": the application layer; "output":
    #: unsent output above the high-water mark); reading resumes when none is left.
    _holds: frozenset[str] = frozenset()
    #: Whether the client's unsent output is above the high-water mark (an attribute, not a
    #: property: twisted.web's channel and `progress` read it on every request).
    output_full = False
    #: The high-water mark (bytes), and whether the socket's buffer is over its own, lower,
    #: mark (its `bufferSize`): only then is a write followed by a look at the high-water mark.
    _high = WRITE_BUFFER_HIGH
    _socket_over = False
    _close_timer: IDelayedCall | None = None
    _close_unsent = -1
    _drain_waiters: list[defer.Deferred[None]] | None = None
    #: Seconds a close may be held up before it is forced; None leaves it to the port type.
    close_grace: float | None = CLOSE_GRACE

    def makeConnection(self, transport: Any) -> None:
        if self.factory.keep_client_hello:
            self._hello = b""
        runtime = getattr(self.factory, "runtime", None)
        high = getattr(getattr(runtime, "port", None), "write_buffer_high", None) or WRITE_BUFFER_HIGH
        # The socket pauses its producer above its bufferSize, but also reads up to bufferSize
        # bytes at a time, allocating that much per read: it stays at Twisted's 64 KiB (lower
        # when the mark is), and writes above it are measured against the mark here.
        self._high = high
        if high < transport.bufferSize:
            transport.bufferSize = high
        transport.registerProducer(_OutputGate(self), True)
        super().makeConnection(transport)

    # -- back-pressure ---------------------------------------------------------------------------
    #
    # Twisted's TLS protocol registers the application's producer with the socket, one at a
    # time, and only when the application registers one: output written without a producer
    # (a srvsock handler's writes) then has no bound.  Here the socket always has the gate;
    # the application's producer (twisted.web's channel, a proxy's backend) sits behind it.

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._lostTLSConnection:
            producer.stopProducing()
            return
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer}, because producer {self._producer} was never unregistered.")
        if not streaming:
            from twisted.internet._producer_helpers import _PullToPush

            producer = pull = _PullToPush(producer, self)
        self._producer = _ProducerMembrane(producer)
        if not streaming:
            pull.startStreaming()
        if self.output_full:
            self._producer.pauseProducing()

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        from twisted.internet._producer_helpers import _PullToPush

        if isinstance(self._producer._producer, _PullToPush):
            self._producer._producer.stopStreaming()
        self._producer = None
        if self.disconnecting and not self._appSendBuffer:
            self._shutdownTLS()

    def pauseProducing(self) -> None:
        """The application asks to stop reading from the client."""
        self._hold("app")

    def resumeProducing(self) -> None:
        self._release("app")

    def stopProducing(self) -> None:
        self.loseConnection()

    def _hold(self, why: str) -> None:
        if why not in self._holds:
            if not self._holds and self.transport is not None:
                self.transport.pauseProducing()
            self._holds = self._holds | {why}

    def _release(self, why: str) -> None:
        if why in self._holds:
            self._holds = self._holds - {why}
            if not self._holds and self.transport is not None:
                self.transport.resumeProducing()

    def unsent(self) -> int:
        """Bytes written to the client that the socket has not sent yet (best effort)."""
        t = self.transport
        try:
            return len(t.dataBuffer) - t.offset + t._tempDataLen + sum(map(len, self._appSendBuffer))
        except (AttributeError, TypeError):
            return 0

    def drained(self) -> defer.Deferred[None]:
        """Fires when the client's unsent output is back under the high-water mark (or it is gone)."""
        if not self.output_full or self._lostTLSConnection or self.disconnecting:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(d)
        return d

    def _check_output(self) -> None:
        """Hold the output once the socket's unsent bytes are over the high-water mark."""
        if not self.output_full:
            t = self.transport
            try:
                buffered = len(t.dataBuffer) + t._tempDataLen  # what the socket compares with its bufferSize
            except (AttributeError, TypeError):
                buffered = self._high + 1  # a transport that paused without saying how full it is
            if buffered > self._high:
                self._output_full()

    def _output_full(self) -> None:
        self.output_full = True
        self._hold("output")
        if self._producer is not None:
            self._producer.pauseProducing()

    def _output_drained(self) -> None:
        self.output_full = False
        t = self.transport
        if t is not None and t.disconnecting:
            # Closing: the socket resumes a paused producer instead of closing; step aside.
            t.unregisterProducer()
            return
        self._release("output")
        progress = getattr(self.wrappedProtocol, "progress", None)
        if progress is not None:
            progress()  # the client took its output
        if self._producer is not None and not self._appSendBuffer:
            self._producer.resumeProducing()
        self._fire_drained()

    def _output_stopped(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()
        self._fire_drained()

    def _fire_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for d in waiters or ():
            d.callback(None)

    # -- closing ---------------------------------------------------------------------------------

    def loseConnection(self) -> None:
        """Close after what is already written, with a TLS close_notify; guaranteed.

        Twisted's TLS protocol waits for the application's producer to unregister (a
        twisted.web channel never does before its connection is lost) and for the
        client's answering close_notify: the producer is let go here, and a connection
        whose client takes none of its remaining output for `close_grace` seconds (does
        not read, or does not answer the close) is aborted.
        """
        if self.disconnecting or not self.connected:
            return
        if self._producer is not None:
            self.unregisterProducer()
        super().loseConnection()
        self._arm_close_timer()

    def abortConnection(self) -> None:
        self._cancel_close_timer()
        super().abortConnection()

    def _arm_close_timer(self) -> None:
        grace = self.close_grace
        if grace is None or self._close_timer is not None or not self.connected:
            return
        runtime = getattr(self.factory, "runtime", None)
        clock = getattr(runtime, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self._close_unsent = self.unsent()
        self._close_timer = clock.callLater(grace, self._close_overdue, clock, grace)  # type: ignore[union-attr]

    def _close_overdue(self, clock: Any, grace: float) -> None:
        self._close_timer = None
        if not self.connected:
            return
        left = self.unsent()
        if 0 < left < self._close_unsent:  # the client is still taking its output
            self._close_unsent = left
            self._close_timer = clock.callLater(grace, self._close_overdue, clock, grace)
            return
        runtime = getattr(self.factory, "runtime", None)
        emit(
            "janustls.conn.close_forced",
            "port {port}: aborted {peer}: its close was held up for {seconds}s ({unsent} bytes unsent)",
            LogLevel.info,
            port=runtime.port.name if runtime is not None else None,
            peer=str(self.getPeer()),
            seconds=grace,
            unsent=left,
        )
        self.abortConnection()

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None

    def connectionLost(self, reason: Any) -> None:
        self._cancel_close_timer()
        self._fire_drained()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._hello is not None and not self._handshakeDone and len(self._hello) < MAX_HELLO:
            self._hello += data
        super().dataReceived(data)
        if not self._buffers_released and self._handshakeDone:
            # Once, when the handshake's flights have gone: an idle connection then
            # holds no handshake-sized BIO buffers (about 5 KiB; best effort).
            self._buffers_released = True
            if not self._lostTLSConnection:
                _openssl.release_bio_buffers(self._tlsConnection)
        if self.after_receive is not None:
            self.after_receive()

    #: Application bytes written to the client (the status and metrics count them).
    bytes_out = 0

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        super().write(data)
        if self._socket_over:
            self._check_output()

    def client_hello(self) -> ClientHello | None:
        """What the client offered, when this port kept its ClientHello; None otherwise."""
        if self._hello_parsed is None and self._hello:
            try:
                self._hello_parsed = parse_client_hello(self._hello)
            except ValueError:
                pass
            self._hello = None
        return self._hello_parsed


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "<unparsable subject>"


@implementer(IOpenSSLServerConnectionCreator)
class PortTLS:
    """One port's TLS policy: builds its Context and makes a connection per client."""

    def __init__(self, port: PortDefinition, material: ServerMaterial, trust: PortTrust) -> None:
        self.port = port
        self.material = material
        self.trust = trust
        self._checked: dict[tuple[bytes, int], Reason | None] = {}
        # Per-handshake work done once per distinct certificate or chain, not per
        # connection: parsed certificates by DER, and verified chains (shared, with
        # their cert_info cache) by the DERs of the chain and by the leaf's DER (a
        # resumed session has the leaf only).  Bounded like `_checked`.
        self._certs: dict[bytes, x509.Certificate] = {}
        self._chains: dict[tuple[bytes, ...], CertChain] = {}
        #: leaf DER -> (its chain, the window every certificate of it is valid in, as timestamps)
        self._by_leaf: dict[bytes, tuple[CertChain, float, float]] = {}
        self.context = self._build_context()

    #: Set by webserv ports with exception rules (`janustls.ports.webserv`): a `require`
    #: port with ON SSLNOCERTERR only requests, the web layer enforces; with ON SSLCERTERR
    #: a refused certificate is recorded (`PortTLSProtocol.refusal`), the handshake
    #: finishes without it, and the web layer answers with the typed reason.
    tolerate_missing = False
    tolerate_refused = False

    def tolerate(self, missing: bool, refused: bool) -> None:
        """Hand certificate problems to the web layer; rebuilds the Context (new connections)."""
        self.tolerate_missing, self.tolerate_refused = missing, refused
        self.context = self._build_context()

    # The verify mode the port asks for at the handshake.
    @property
    def verify_mode(self) -> int:
        if self.tolerate_missing and self.port.client_cert is ClientCertMode.REQUIRE:
            return SSL.VERIFY_PEER
        return _VERIFY_MODES[self.port.client_cert]

    def _build_context(self) -> SSL.Context:
        port = self.port
        self._by_leaf.clear()  # sessions of a new Context were verified by it
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_VERSIONS[port.tls_min])
        ctx.set_max_proto_version(_VERSIONS[port.tls_max])
        ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | _openssl.OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION
        )
        # Idle connections give their read and write buffers back to OpenSSL.
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        try:
            ctx.set_cipher_list((port.ciphers or DEFAULT_CIPHERS).encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as e:
            raise ConfigErrors([ConfigError(port.source, port.section, "ciphers", f"no usable TLS 1.2 cipher: {e}")])
        ctx.use_certificate(self.material.leaf)
        for extra in self.material.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(self.material.key)
        ctx.check_privatekey()
        ctx.set_session_id(hashlib.sha256(f"janustls:{port.name}".encode()).digest()[:32])
        if not port.session_cache or self.tolerate_refused:  # a refused client must not resume
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_options(SSL.OP_NO_TICKET)
        else:
            from janustls import tickets

            if tickets.apply(ctx, port.name):  # keys shared by workers and machines, when configured
                # Another process may resume this session: put the client's intermediates in
                # the ticket so it can name the issuers (a Python callback per ticket, so
                # only when tickets are shared).
                _openssl.keep_chain_in_tickets(ctx)
        store = ctx.get_cert_store()
        assert store is not None
        for ca in self.trust.cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            ctx.add_client_ca(ca)
        for crl in self.trust.crls:
            store.add_crl(crl)
        if self.trust.has_intermediate_anchor:
            # An intermediate added without its root is a trust anchor (Janus ADDCA); OpenSSL
            # needs this flag for that.  Only then: it also ends every chain at the first
            # added CA, which would shorten chains whose root is added too.
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        if self.trust.crls:
            flags = crypto.X509StoreFlags.CRL_CHECK
            if self.trust.crl_check is CRLCheck.CHAIN:
                flags |= crypto.X509StoreFlags.CRL_CHECK_ALL
            store.set_flags(flags)
        if port.verify_depth is not None:
            # OpenSSL counts intermediates; ours counts the anchor too, so allow one
            # more here and let `PortTrust.check` give the precise verdict.
            ctx.set_verify_depth(port.verify_depth)
        ctx.set_verify(self.verify_mode, self.verify)
        return ctx

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        # The verify callback finds its connection's state here (newer Twisted sets the
        # same app data itself; older releases do not).
        connection.set_app_data(tlsProtocol)
        return connection

    def verify(self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        """OpenSSL's verdict on each certificate, plus ours; the first failure is kept."""
        state: PortTLSProtocol = _openssl.tls_protocol_of(connection)
        if not ok and errno == CRL_HAS_EXPIRED and self.port.crl_expired is CRLExpired.TOLERATE:
            return True  # a stale CRL is still checked (janustls.crlwatch logs that it is stale)
        if not ok:
            if state.refusal is None:
                state.refusal = Refusal(
                    reason_for_verify_error(errno),
                    depth,
                    _subject(cert.to_cryptography()),
                    _openssl.verify_error_string(errno),
                )
            return self.tolerate_refused
        der = _openssl.certificate_der(cert)
        reason = self._check(der, depth)
        if reason is not None:
            if state.refusal is None:
                state.refusal = Refusal(reason, depth, _subject(x509.load_der_x509_certificate(der)), reason.description)
            return self.tolerate_refused
        if depth == 0:
            state.leaf_der = der
        return True

    def _check(self, der: bytes, depth: int) -> Reason | None:
        """janustls's own checks of one certificate at its depth (`PortTrust.check`), cached.

        The one judgement of a certificate: the verify callback asks it during a full
        handshake, `_judge_resumed` for each certificate of a resumed session.
        """
        key = (der, depth)
        try:
            return self._checked[key]
        except KeyError:
            pass
        reason = self.trust.check(self._parsed(der), len(der), depth)
        if len(self._checked) >= _CHECK_CACHE_SIZE:
            self._checked.clear()
        self._checked[key] = reason
        return reason

    def _judge_resumed(self, certs: list[x509.Certificate], *, revocation: bool) -> tuple[Reason, int] | None:
        """A resumed session's chain judged as a fresh handshake would judge it now.

        OpenSSL verifies nothing when a session resumes.  Each certificate goes through
        `_check` (size, depth, key strength, usage: what the verify callback applies),
        then `PortTrust.resumed_problem` does what OpenSSL does on a full handshake:
        dates, CRL presence and freshness (`crl_expired`), revocation.
        """
        for depth, cert in enumerate(certs):
            reason = self._check(cert.public_bytes(serialization.Encoding.DER), depth)
            if reason is not None:
                return reason, depth
        return self.trust.resumed_problem(certs, revocation=revocation)

    def verified_chain(self, connection: SSL.Connection) -> list[x509.Certificate]:
        """The client's chain, leaf to anchor; rebuilt for a resumed session; [] without one."""
        return list(self.client_chain(connection).certificates)

    def client_chain(self, connection: SSL.Connection) -> CertChain:
        """The client's verified chain as a `CertChain`, shared by connections with the same chain.

        A resumed session has the client's leaf but not the chain OpenSSL verified; the
        chain this Context verified for that leaf is used, else `PortTrust.complete_chain`
        rebuilds it.  EMPTY_CHAIN without a certificate.
        """
        tls = _openssl.tls_protocol_of(connection)
        if self.tolerate_refused and tls.refusal is not None:
            return EMPTY_CHAIN  # recorded, never verified: the web layer answers SSLCERTERR
        leaf_der, tls.leaf_der = tls.leaf_der, None
        if leaf_der is not None:
            # This Context verified a chain for this very certificate before: the same
            # identity, without reading the chain out of OpenSSL again.
            known = self._by_leaf.get(leaf_der)
            if known is not None:
                return known[0]
        ders = _openssl.verified_chain_der(connection)
        if ders:
            key = tuple(ders)
            chain = self._chains.get(key)
            if chain is None:
                chain = CertChain([self._parsed(der) for der in ders])
                if len(self._chains) >= _CHECK_CACHE_SIZE:
                    self._chains.clear()
                self._chains[key] = chain
                self._remember_leaf(ders[0], chain)
            return chain
        # A resumed session: OpenSSL verified its certificate when the session was made,
        # perhaps under another Context (shared ticket keys survive a reload).  Judge it
        # again under this one: a refusal is recorded and the port protocol closes.
        leaf_der = _openssl.peer_certificate_der(connection)
        if leaf_der is None:
            return EMPTY_CHAIN
        known = self._by_leaf.get(leaf_der)
        if known is not None:
            # Verified by this Context (same CAs and CRLs): dates, CRL freshness and the
            # per-certificate checks may still have changed their verdict since.
            chain, valid_from, valid_until = known
            if valid_from <= time.time() <= valid_until and not self.trust.crls:
                return chain  # nothing of the verdict can have changed
            certs = list(chain.certificates)
            problem = self._judge_resumed(certs, revocation=False)
        else:
            leaf = self._parsed(leaf_der)
            rest = connection.get_peer_cert_chain(as_cryptography=True) or []
            rest += [self._parsed(der) for der in _openssl.ticket_chain_der(connection)]
            certs = self.trust.complete_chain(leaf, [c for c in rest if c != leaf])
            if not certs:
                tls.refusal = Refusal(Reason.UNKNOWN_CA, 0, _subject(leaf), "a resumed session's certificate chains to no CA of this port")
                return EMPTY_CHAIN
            problem = self._judge_resumed(certs, revocation=True)
        if problem is not None:
            reason, depth = problem
            tls.refusal = Refusal(reason, depth, _subject(certs[depth]), f"{reason.description} (resumed session)")
            return EMPTY_CHAIN
        if known is not None:
            return known[0]
        chain = CertChain(certs)
        self._remember_leaf(leaf_der, chain)
        return chain

    def _parsed(self, der: bytes) -> x509.Certificate:
        cert = self._certs.get(der)
        if cert is None:
            cert = x509.load_der_x509_certificate(der)
            if len(self._certs) >= _CHECK_CACHE_SIZE:
                self._certs.clear()
            self._certs[der] = cert
        return cert

    def _remember_leaf(self, der: bytes, chain: CertChain) -> None:
        if len(self._by_leaf) >= _CHECK_CACHE_SIZE:
            self._by_leaf.clear()
        certs = chain.certificates
        valid_from = max(c.not_valid_before_utc for c in certs).timestamp()
        valid_until = min(c.not_valid_after_utc for c in certs).timestamp()
        self._by_leaf[der] = (chain, valid_from, valid_until)


def refusal_for_failure(tls_protocol: PortTLSProtocol, failure: Failure | None) -> Refusal | None:
    """Why a handshake failed, when the client certificate was the cause; None otherwise."""
    if tls_protocol.refusal is not None:
        return tls_protocol.refusal
    if failure is not None and isinstance(failure.value, SSL.Error):
        text = str(failure.value).lower()
        if "peer did not return a certificate" in text or "certificate required" in text:
            return Refusal(Reason.NO_CERTIFICATE, None, None, Reason.NO_CERTIFICATE.description)
    return None


def refused_leaf(tls_protocol: Any) -> x509.Certificate | None:
    """The client's own certificate on a refused connection, or None when it sent none.

    The peer certificate when the handshake completed (a resumed session, an identity
    rule, a web port answering SSLCERTERR); otherwise the chain OpenSSL built before it
    refused (it keeps it even then), whose first certificate is the one the client sent.
    """
    try:
        connection = tls_protocol.getHandle()
        der = _openssl.peer_certificate_der(connection)
        if der is None:
            chain = _openssl.verified_chain_der(connection)
            der = chain[0] if chain else None
        return x509.load_der_x509_certificate(der) if der is not None else None
    except Exception:  # noqa: BLE001  a log detail: never the reason a refusal goes unlogged
        return None


def failure_text(failure: Failure | None) -> str:
    """A short text for a TLS failure: the OpenSSL reason strings, not a Python repr."""
    if failure is None:
        return "connection closed"
    value = failure.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(item[2]) for item in value.args[0] if isinstance(item, tuple) and len(item) >= 3]
        if parts:
            return "; ".join(parts)
    return str(value) or type(value).__name__


def build_port_tls(port: PortDefinition) -> PortTLS:
    """Load a port's files and build its TLS policy; all problems as located ConfigErrors."""
    errors: list[ConfigError] = []
    material: ServerMaterial | None = None
    try:
        material = load_server_material(port.certificate, port.private_key, port.private_key_password_env)
    except MaterialError as e:
        key, _, message = str(e).partition(": ")
        errors.append(ConfigError(port.source, port.section, key, message))
    trust: PortTrust | None = None
    try:
        trust = load_port_trust(port, material.chain if material else ())
    except ConfigErrors as e:
        errors.extend(e.errors)
    if errors:
        raise ConfigErrors(errors)
    assert material is not None and trust is not None
    try:
        return PortTLS(port, material, trust)
    except SSL.Error as e:
        raise ConfigErrors([ConfigError(port.source, port.section, "certificate", f"OpenSSL refused it: {e}")])
