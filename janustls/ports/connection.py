"""The object application code gets for a connection: who the client is, and its bytes.

srvsock handlers receive it as `sock`; web requests answer the same certificate calls
by delegating to their connection's object.  Certificate fields are parsed lazily and
kept for the connection's life (`CertChain`), so asking on every request costs once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol

from cryptography import x509
from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure

from janustls.core.certinfo import EMPTY_CHAIN, CertChain
from janustls.errors import LineTooLong

__all__ = ["Connection", "ConnectionOwner", "MAX_LINE", "READ_BUFFER_HIGH"]

#: The longest line `readline()` will assemble before failing with LineTooLong.
MAX_LINE = 65536
#: Unread bytes above which the transport is paused (back-pressure on the client).
READ_BUFFER_HIGH = 262144


class ReadDeferred(defer.Deferred[bytes]):
    """The Deferred of a pending read.  A srvsock handler runner that awaits it sets
    `runner` and is resumed directly with the bytes, without a callback chain: the
    per-read cost of `await sock.read()` is one coroutine step."""

    runner: Any = None

    def __await__(self) -> Generator[Any, Any, bytes]:
        if self.called:
            result: bytes = yield from super().__await__()
            return result
        # Resumed with the bytes by HandlerRun, or with the result by ensureDeferred.
        return (yield self)  # type: ignore[no-any-return]  # what is sent in is the read's bytes


def _deliver(d: ReadDeferred, data: bytes, error: Exception | None = None) -> None:
    runner = d.runner
    if runner is not None:
        d.runner = None
        if error is not None:
            runner._step(None, Failure(error))
        else:
            runner._step(data, None)
    elif error is not None:
        d.errback(error)
    else:
        d.callback(data)


class ConnectionOwner(Protocol):
    """What a Connection needs from the port protocol that owns it (`ports.base.PortProtocol`)."""

    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def drained(self) -> defer.Deferred[None]: ...
    def progress(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def request_certificate(self, require: bool = False) -> defer.Deferred[list[x509.Certificate]]: ...
    def can_request_certificate(self) -> tuple[bool, str]: ...


class Connection:
    """One client connection on a janustls port, after its handshake."""

    __slots__ = (
        "_asked",
        "_buffer",
        "_chain",
        "_eof",
        "_paused",
        "_progress",
        "_protocol",
        "_read_size",
        "_request",
        "_waiting",
        "cipher",
        "peer",
        "port_name",
        "tls_version",
    )  # fmt: skip

    def __init__(
        self,
        protocol: ConnectionOwner,
        chain: list[x509.Certificate] | CertChain,
        *,
        tls_version: str,
        cipher: str,
        peer: IAddress,
        port_name: str,
        asked: bool,
    ) -> None:
        self._protocol = protocol
        self._chain = chain if isinstance(chain, CertChain) else CertChain(chain) if chain else EMPTY_CHAIN
        self.tls_version = tls_version
        self.cipher = cipher
        self.peer = peer
        self.port_name = port_name
        self._buffer = bytearray()
        self._waiting: tuple[ReadDeferred, Callable[[], bytes | None]] | None = None
        # The size of a waiting `read()` (0 for other reads): bytes that arrive for it
        # while nothing is buffered are handed over as they are, without the buffer.
        self._read_size = 0
        self._eof = False
        self._paused = False
        #: Whether completed reads tell the owner (`ConnectionOwner.progress`): set False by a
        #: port without idle_timeout, where progress counts for nothing.
        self._progress = True
        # Janus: a certificate is requested at most once per TLS session.
        self._asked = asked
        self._request: list[defer.Deferred[x509.Certificate | None]] | None = None

    # -- who the client is -------------------------------------------------------------

    def cert_levels(self) -> int:
        """Certificates in the verified client chain, leaf to trust anchor; 0 without one."""
        return self._chain.levels()

    def cert_info(self, item: str, level: int = 0) -> str | None:
        """One field of the certificate at `level` as text (see `janustls.core.certinfo.ITEMS`)."""
        return self._chain.info(item, level)

    def cert_values(self, item: str, level: int = 0) -> list[str]:
        """Every value of a field that can repeat (OU, SAN_DNS, ...)."""
        return list(self._chain.values(item, level))

    def certificate(self, level: int = 0) -> x509.Certificate | None:
        return self._chain.certificate(level)

    @property
    def verified_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain.certificates

    @property
    def cert_chain(self) -> CertChain:
        """The chain with its per-item cache (shared by connections with the same chain)."""
        return self._chain

    def request_certificate(self, require: bool = False) -> defer.Deferred[x509.Certificate | None]:
        """The client's certificate, asking for it mid-connection if the port did not ask.

        At most one request per TLS session (Janus): once asked, the answer is what
        the session has, certificate or None.  `require=True`: no certificate closes
        the connection (logged).  Fails with CertificateRequestTimeout when the client
        does not answer within the port's request_timeout; the connection stays open.
        """
        if self._asked:
            return defer.succeed(self.certificate())
        waiter: defer.Deferred[x509.Certificate | None] = defer.Deferred()
        if self._request is None:
            self._request = [waiter]
            self._protocol.request_certificate(require).addBoth(self._request_done)
        else:
            self._request.append(waiter)
        return waiter

    def can_request_certificate(self) -> tuple[bool, str]:
        """Whether `request_certificate()` can reach the client, and why (or why not).

        True when the certificate is already known or was already asked for.
        """
        if self._asked:
            return True, "already asked"
        return self._protocol.can_request_certificate()

    def _request_done(self, outcome: object) -> None:
        """Answer every caller waiting on the one request (the certificate, or the error)."""
        self._asked = True
        if isinstance(outcome, list) and outcome:
            self._chain = CertChain(outcome)
        waiters, self._request = self._request or [], []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(self.certificate())

    # -- bytes ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if isinstance(data, str):
            raise TypeError("write() takes bytes; encode text first")
        self._protocol.send(data)

    def close(self) -> None:
        self._protocol.close()

    def drain(self) -> defer.Deferred[None]:
        """Fires when the client's unsent output is back under the port's high-water mark.

        `write()` never blocks: a handler that writes much without reading (which would
        stop it being fed) awaits this between writes to keep its memory bounded.
        """
        return self._protocol.drained()

    def read(self, n: int = 65536) -> defer.Deferred[bytes]:
        """Up to `n` bytes as soon as any are there; b"" at end of stream."""
        if n <= 0:
            raise ValueError("read() needs a positive size")
        if self._waiting is not None:
            raise RuntimeError("another read is already waiting on this connection")
        if not self._buffer and not self._eof:
            # Nothing to take yet (the usual case): wait for the bytes, which `feed` hands
            # over as they come.
            w = ReadDeferred()
            self._read_size = n
            self._waiting = (w, self._take_read)
            if self._paused:
                self._resume()
            return w
        self._read_size = n
        d = self._wait(self._take_read)
        if self._waiting is None:
            self._read_size = 0
        return d

    def _take_read(self) -> bytes | None:
        if self._buffer:
            n = self._read_size
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data
        return b"" if self._eof else None

    def readexactly(self, n: int) -> defer.Deferred[bytes]:
        """Exactly `n` bytes, or fewer only at end of stream."""

        def take() -> bytes | None:
            if len(self._buffer) >= n or (self._eof and self._buffer):
                data = bytes(self._buffer[:n])
                del self._buffer[:n]
                return data
            return b"" if self._eof else None

        return self._wait(take)

    def readline(self) -> defer.Deferred[bytes]:
        """One line including its b"\\n"; the rest at end of stream; b"" after it."""

        def take() -> bytes | None:
            end = self._buffer.find(b"\n")
            if end >= 0:
                data = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return data
            if len(self._buffer) > MAX_LINE:
                raise LineTooLong(f"no end of line within {MAX_LINE} bytes")
            if self._eof:
                data = bytes(self._buffer)
                self._buffer.clear()
                return data
            return None

        return self._wait(take)

    def _wait(self, take: Callable[[], bytes | None]) -> defer.Deferred[bytes]:
        if self._waiting is not None:
            raise RuntimeError("another read is already waiting on this connection")
        try:
            data = take()
        except Exception as e:
            return defer.fail(e)
        if data is not None:
            self._after_read()
            if self._progress:
                self._protocol.progress()
            return defer.succeed(data)
        d = ReadDeferred()
        self._waiting = (d, take)
        self._resume()
        return d

    def _after_read(self) -> None:
        if self._paused and len(self._buffer) < READ_BUFFER_HIGH // 2:
            self._resume()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._protocol.resume_reading()

    def feed(self, data: bytes) -> None:
        """Bytes from the client.  For the owning port protocol, not for applications."""
        if data and self._read_size >= len(data) and not self._buffer and self._waiting is not None:
            d = self._waiting[0]
            self._waiting = None
            self._read_size = 0
            if self._progress:
                self._protocol.progress()
            _deliver(d, bytes(data))
            return
        self._buffer += data
        self._wake()
        if not self._paused and len(self._buffer) > READ_BUFFER_HIGH:
            self._paused = True
            self._protocol.pause_reading()

    def end_of_input(self) -> None:
        """The client's stream has ended (close, reset, or the connection was closed).  For the
        owning port protocol, not for applications."""
        self._eof = True
        waiting = self._waiting
        if waiting is not None and not self._buffer and waiting[1] == self._take_read:
            # A read() waiting on an empty buffer gets b"": what _wake would find, in place.
            d = waiting[0]
            self._waiting = None
            self._read_size = 0
            if self._progress:
                self._protocol.progress()
            _deliver(d, b"")
            return
        self._wake()

    def _wake(self) -> None:
        if self._waiting is None:
            return
        d, take = self._waiting
        try:
            data = take()
        except Exception as e:
            self._waiting = None
            self._read_size = 0
            _deliver(d, b"", e)
            return
        if data is not None:
            self._waiting = None
            self._read_size = 0
            if self._paused:
                self._after_read()
            if self._progress:
                self._protocol.progress()
            _deliver(d, data)

    def __repr__(self) -> str:
        who = self.cert_info("CN") if self.cert_levels() else "no certificate"
        return f"<janustls.Connection port={self.port_name} peer={self.peer} {who}>"
