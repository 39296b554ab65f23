"""Twisted's TLS protocol for janustls ports: output flow control, the close grace, the ClientHello kept.

What a handshake failure means for the log (`refusal_for_failure`, `refused_leaf`,
`failure_text`) lives here too, beside the state the verify callback records.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from janustls._reactor import reactor_or_global
from janustls.core.clienthello import MAX_HELLO, ClientHello, parse_client_hello
from janustls.core.config import DEFAULT_WRITE_BUFFER_HIGH
from janustls.core.reasons import Reason, Refusal
from janustls.events import emit
from janustls.tls import _hidden, _openssl
from janustls.tls._twisted import ProducerMembrane, PullToPush, TLSProtocolBase, membrane_inner

__all__ = [
    "PortTLSProtocol",
    "refusal_for_failure",
    "refused_leaf",
    "failure_text",
    "CLOSE_GRACE",
    "COALESCE_MAX",
    "WRITE_BUFFER_HIGH",
]


#: Unsent output (bytes, per connection) above which janustls stops reading from the client
#: and pauses the application's producer, until the client has taken all of it.
WRITE_BUFFER_HIGH = DEFAULT_WRITE_BUFFER_HIGH  # the port key write_buffer_high
#: Seconds a closing connection may go without the client taking any of its remaining
#: output (or answering the TLS close) before it is aborted.
CLOSE_GRACE = 5.0
#: Application bytes gathered in one reactor turn above which they are handed to OpenSSL at
#: once (a multiple of the 16 KiB record size: no short record in between).
COALESCE_MAX = 4 * 16384


class _CloseWatch:
    """The close grace of every closing connection on one clock, kept by one timer.

    A connection is added when its close begins and removed when it is lost (a dict
    insert and delete, where a timer each cost a `callLater` and a `cancel`); a sweep
    a few times per grace aborts the overdue ones, so a close is held up for between
    the grace and 1.25 x the grace.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.pending: dict[PortTLSProtocol, None] = {}
        self.interval = 1.0
        self._call: IDelayedCall | None = None

    def add(self, tls: PortTLSProtocol, grace: float) -> None:
        tls._close_deadline = self.clock.seconds() + grace
        tls._close_watch = self
        self.pending[tls] = None
        if grace / 4 < self.interval:
            self.interval = grace / 4
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for tls in [t for t in self.pending if t._close_deadline is None or t._close_deadline <= now]:
            if tls._close_overdue(now):
                self.pending.pop(tls, None)
                tls._close_deadline = None
        if self.pending:
            self._call = self.clock.callLater(self.interval, self._sweep)


_close_watches: weakref.WeakKeyDictionary[Any, _CloseWatch] = weakref.WeakKeyDictionary()


def _close_watch(clock: Any) -> _CloseWatch:
    try:
        watch = _close_watches.get(clock)
        if watch is None:
            watch = _close_watches[clock] = _CloseWatch(clock)
    except TypeError:  # a clock that takes no weak reference: a watch of its own each time
        watch = _CloseWatch(clock)
    return watch


@implementer(IPushProducer)
class _OutputGate:
    """The socket's own back-pressure (unsent output above its buffer size, drained again),
    passed to the TLS protocol, which stops reading from the client and pauses the
    application's producer.  Registered with the socket once it is needed (`_arm_gate`):
    when the application registers a producer, when it writes before the handshake, or when
    the socket's unsent output first goes over its buffer size; a connection whose output
    never backs up (most) costs the socket no producer calls on its writes and its loss."""

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


class PortTLSProtocol(TLSProtocolBase):
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
    #: The socket's gate, once registered (`_arm_gate`).
    _gate: _OutputGate | None = None
    #: Whether application writes are gathered (`write`): from the first write after the
    #: handshake until the close begins; a flag, where asking Twisted's state took three calls
    #: per write.
    _gathering = False
    #: When a held-up close is aborted (the clock's seconds), kept by one `_CloseWatch` per
    #: clock: a dict entry per closing connection, not a timer each.
    _close_deadline: float | None = None
    _close_watch: _CloseWatch | None = None
    _close_unsent = -1
    _drain_waiters: list[defer.Deferred[None]] | None = None
    #: Seconds a close may be held up before it is forced; None leaves it to the port type.
    close_grace: float | None = CLOSE_GRACE

    def makeConnection(self, transport: Any) -> None:
        if self.factory.keep_client_hello:  # type: ignore[attr-defined]  # set by the port's TLS factory (ports/base.py, a layer above)
            self._hello = b""
        # The port's write_buffer_high (`PortTLSFactory` keeps it at hand).
        high = getattr(self.factory, "write_buffer_high", None) or WRITE_BUFFER_HIGH
        # The socket pauses its producer above its bufferSize, but also reads up to bufferSize
        # bytes at a time, allocating that much per read: it stays at Twisted's 64 KiB (lower
        # when the mark is), and writes above it are measured against the mark here.
        self._high = high
        if high < transport.bufferSize:
            transport.bufferSize = high
        super().makeConnection(transport)

    # -- back-pressure ---------------------------------------------------------------------------
    #
    # Twisted's TLS protocol registers the application's producer with the socket, one at a
    # time, and only when the application registers one: output written without a producer
    # (a srvsock handler's writes) then has no bound.  Here the socket always has the gate;
    # the application's producer (twisted.web's channel, a proxy's backend) sits behind it.

    def _arm_gate(self, over: bool = False) -> None:
        """Register the gate with the socket (once).  `over`: the socket's unsent output is
        over its buffer size already (it pauses a producer only as it writes): paused now,
        as the socket would have paused it, and resumed by the socket when it has drained."""
        if self._gate is not None:
            return
        t = self.transport
        if t is None or t.disconnected:
            return
        self._gate = gate = _OutputGate(self)
        t.registerProducer(gate, True)
        if over:
            t.producerPaused = True
            gate.pauseProducing()

    def _watch_socket(self) -> None:
        """After a write without the gate: arm it once the socket's unsent output is over its
        buffer size; with it: look at the high-water mark while the socket is over."""
        if self._gate is None:
            t = self.transport
            if t is not None and self.socket_buffered() > t.bufferSize:
                self._arm_gate(over=True)
        elif self._socket_over:
            self._check_output()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.tls_lost:
            producer.stopProducing()
            return
        self._arm_gate()  # the socket's loss stops the application's producer through the gate
        if self.app_producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self.app_producer} was never unregistered."
            )
        if not streaming:
            producer = pull = PullToPush(producer, self)
        self.app_producer = ProducerMembrane(producer)
        if not streaming:
            pull.startStreaming()
        if self.output_full:
            self.app_producer.pauseProducing()

    def unregisterProducer(self) -> None:
        if self.app_producer is None:
            return
        if isinstance(membrane_inner(self.app_producer), PullToPush):
            membrane_inner(self.app_producer).stopStreaming()
        self.app_producer = None
        if self.disconnecting and not self.app_send_buffer:
            self.shutdown_tls()

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
        return self.transport_unsent() + self._pending_len

    def drained(self) -> defer.Deferred[None]:
        """Fires when the client's unsent output is back under the high-water mark (or it is gone)."""
        if not self.output_full or self.tls_lost or self.disconnecting:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(d)
        return d

    def _check_output(self) -> None:
        """Hold the output once the socket's unsent bytes are over the high-water mark."""
        if not self.output_full and self.socket_buffered() > self._high:
            self._output_full()

    def _output_full(self) -> None:
        self.output_full = True
        self._hold("output")
        if self.app_producer is not None:
            self.app_producer.pauseProducing()

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
        if self.app_producer is not None and not self.app_send_buffer:
            self.app_producer.resumeProducing()
        self._fire_drained()

    def _output_stopped(self) -> None:
        if self.app_producer is not None:
            self.app_producer.stopProducing()
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
        self.flush_writes()
        self._gathering = False
        if self.app_producer is not None:
            self.unregisterProducer()
        super().loseConnection()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self._arm_close_timer()

    def abortConnection(self) -> None:
        self._gathering = False
        self._cancel_close_timer()
        self._drop_writes()
        super().abortConnection()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    def _arm_close_timer(self) -> None:
        grace = self.close_grace
        if grace is None or self._close_deadline is not None or not self.connected:
            return
        runtime = getattr(self.factory, "runtime", None)
        clock = reactor_or_global(getattr(runtime, "reactor", None))
        self._close_unsent = self.unsent()
        _close_watch(clock).add(self, grace)

    def _close_overdue(self, now: float) -> bool:
        """The close grace ran out (`_CloseWatch`); True when the connection is done with."""
        grace = self.close_grace
        if not self.connected or grace is None:
            return True
        left = self.unsent()
        if 0 < left < self._close_unsent:  # the client is still taking its output
            self._close_unsent = left
            self._close_deadline = now + grace
            return False
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
        return True

    def _cancel_close_timer(self) -> None:
        if self._close_deadline is not None:
            self._close_deadline = None
            watch = self._close_watch
            if watch is not None:
                watch.pending.pop(self, None)

    def connectionLost(self, reason: Any) -> None:  # type: ignore[override]  # Twisted always passes the reason
        self._gathering = False
        if self._close_deadline is not None:
            self._cancel_close_timer()
        if self._pending is not None or self._flush_call is not None:
            self._drop_writes()
        if self._drain_waiters is not None:
            self._fire_drained()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    def dataReceived(self, data: bytes) -> None:
        if self._hello is not None and not self.handshake_done and len(self._hello) < MAX_HELLO:
            self._hello += data
        if self._pending:
            self.flush_writes()  # written in an earlier turn: out before the client's bytes are read (a close_notify among them)
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False
        if self._pending:
            self.flush_writes()  # what the application answered to these bytes: as few records as fit
        if not self._buffers_released and self.handshake_done:
            # Once, when the handshake's flights have gone: the connection holds no
            # handshake-sized BIO buffers (about 5 KiB; best effort).  OpenSSL releases its
            # record buffers when idle by itself: the port's Context sets MODE_RELEASE_BUFFERS.
            self._buffers_released = True
            if not self.tls_lost:
                # Writes from now on are gathered without asking Twisted's state each time.
                self._gathering = not self.disconnecting
                handle = self.getHandle()
                _openssl.release_bio_buffers(handle)
                _hidden.drop_client_intermediates(handle)  # the chain is in Python by now
        if self.after_receive is not None:
            self.after_receive()

    #: Application bytes written to the client (the status and metrics count them).
    bytes_out = 0

    # -- coalesced writes --------------------------------------------------------------------------
    #
    # Each SSL_write makes at least one TLS record: a response written as status line, headers
    # and body would leave as three records (strict clients and TLS fuzzers object; each record
    # costs an SSL_write and 22 bytes).  Application writes made in one turn of the reactor are
    # gathered instead and handed to OpenSSL as one buffer, which it cuts into full 16 KiB
    # records: when the bytes received are processed (at the end of `dataReceived`), at the
    # end of the turn for writes made elsewhere (a timer, a backend, a thread's callback), at
    # once above `COALESCE_MAX` bytes, and before any close.  Writes before the handshake, and
    # after a close began, go straight through (Twisted's own buffering and rules apply).

    #: Application writes of this turn not yet handed to OpenSSL, and their size.
    _pending: list[bytes] | None = None
    _pending_len = 0
    _flush_call: IDelayedCall | None = None
    _receiving = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_out += len(data)
        if not self._gathering and not (self.handshake_done and not self.disconnecting and not self.tls_lost):
            self._arm_gate()  # before the handshake, Twisted sends the bytes written so far without a write of ours
            super().write(data)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
            self._watch_socket()
            return
        self._gathering = True
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._pending_len = len(data)
            if not self._receiving:
                self._schedule_flush()
        else:
            pending.append(data)
            self._pending_len += len(data)
        if self._pending_len >= COALESCE_MAX:
            self.flush_writes()

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def write_whole(self, data: bytes) -> None:
        """A whole message (an HTTP response written in one piece): handed to OpenSSL at once,
        with no end-of-turn timer, when nothing else is gathered and no bytes received are
        being processed (then it leaves with the others, as `write`)."""
        if (
            self._receiving
            or self._pending is not None
            or not self.handshake_done
            or self.disconnecting
            or self.tls_lost
        ):
            self.write(data)
            return
        if not data:
            return
        self.bytes_out += len(data)
        super().write(data)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        if self._socket_over:
            self._check_output()

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            runtime = getattr(self.factory, "runtime", None)
            clock = reactor_or_global(getattr(runtime, "reactor", None))
            self._flush_call = clock.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._flush_call = None
        self.flush_writes()

    def flush_writes(self) -> None:
        """Hand the writes gathered in this turn to OpenSSL now, as one buffer."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        pending, self._pending = self._pending, None
        if not pending:
            return
        self._pending_len = 0
        super().write(pending[0] if len(pending) == 1 else b"".join(pending))  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        if self._gate is None:  # _watch_socket, in place
            if self.socket_buffered() > self.transport.bufferSize:
                self._arm_gate(over=True)
        elif self._socket_over:
            self._check_output()

    def _drop_writes(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        self._pending = None
        self._pending_len = 0

    def client_hello(self) -> ClientHello | None:
        """What the client offered, when this port kept its ClientHello; None otherwise."""
        if self._hello_parsed is None and self._hello:
            try:
                self._hello_parsed = parse_client_hello(self._hello)
            except ValueError:
                pass
            self._hello = None
        return self._hello_parsed


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
