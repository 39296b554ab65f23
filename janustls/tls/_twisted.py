"""The one home of the private Twisted and twisted.web names janustls relies on.

Twisted gives no public way to put a flow-control gate in front of its TLS protocol,
to let a close_notify end one direction only, to run WSGI with extra environ keys, or
to read the request line before the body arrives; these do it with private names.
Each name is looked up here, when janustls is imported, so a Twisted release that
renames one fails at once with `TwistedChanged` naming it, never mid-connection;
`tests/test_twisted_private.py` pins each against the installed Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import _producer_helpers
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.protocol import Protocol
from twisted.protocols import tls as _tls
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, wsgi
from zope.interface import directlyProvides, providedBy

from janustls.tls import _sslio

__all__ = [
    "TwistedChanged", "ProducerMembrane", "PullToPush", "WSGIResponse", "TLSProtocolBase", "HalfCloseTLSProtocol",
    "wsgi_threadpool", "set_wsgi_threadpool", "wsgi_response", "request_line", "received_header_size", "transport_producer",
    "membrane_inner", "flush_send",
    "PRIVATE_NAMES",
]  # fmt: skip


class TwistedChanged(ImportError):
    """The installed Twisted lacks a private name janustls needs."""


def _require(owner: Any, name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise TwistedChanged(f"janustls needs {getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner.__name__)}."
                             f"{name}, which this Twisted release does not have") from None  # fmt: skip


#: Twisted's wrapper that lets the TLS layer pause an application's producer.
ProducerMembrane: type = _require(_tls, "_ProducerMembrane")
#: Twisted's adapter that makes a pull producer push.
PullToPush: type = _require(_producer_helpers, "_PullToPush")
#: twisted.web's WSGI response, whose environ janustls extends with mod_ssl's SSL_* keys.
WSGIResponse: type = _require(wsgi, "_WSGIResponse")

#: Private methods and attributes of TLSMemoryBIOProtocol used below (class-level ones are
#: checked at import; the instance ones by the pinning test, on a live connection).
_TLS_METHODS = (
    "_flushReceiveBIO", "_flushSendBIO", "_tlsShutdownFinished", "_shutdownTLS", "_checkHandshakeStatus",
    "_unbufferPendingWrites", "_bufferedWrite", "_write",
)  # fmt: skip
_TLS_CLASS_ATTRIBUTES = ("_lostTLSConnection", "_handshakeDone", "_producer", "_aborted", "_reason")
TLS_INSTANCE_ATTRIBUTES = ("_tlsConnection", "_appSendBuffer", "_connectWrapped")
#: The TLS factory's attribute `TLSProtocolBase.makeConnection` builds the OpenSSL connection with (one of them, by version).
TLS_FACTORY_ATTRIBUTES = ("_creatorCallable", "_createConnection")
for _name in _TLS_METHODS + _TLS_CLASS_ATTRIBUTES:
    _require(_tls.TLSMemoryBIOProtocol, _name)
#: The attributes of an HTTP channel and of a WSGI resource read below (instance attributes,
#: pinned by the test).
CHANNEL_ATTRIBUTES = ("_command", "_path", "_receivedHeaderSize")
WSGI_RESOURCE_ATTRIBUTES = ("_threadpool", "_reactor", "_application")
#: The transport attributes `TLSProtocolBase.transport_unsent` reads (best effort).
TRANSPORT_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataLen")

#: Every private name used here, for the pinning test and the report of what depends on Twisted's internals.
PRIVATE_NAMES = (
    "twisted.protocols.tls._ProducerMembrane", "twisted.internet._producer_helpers._PullToPush",
    "twisted.web.wsgi._WSGIResponse", "ProducerMembrane._producer",
    *(f"TLSMemoryBIOProtocol.{n}" for n in _TLS_METHODS + _TLS_CLASS_ATTRIBUTES + TLS_INSTANCE_ATTRIBUTES),
    *(f"TLSMemoryBIOFactory.{n}" for n in TLS_FACTORY_ATTRIBUTES),
    *(f"HTTPChannel.{n}" for n in CHANNEL_ATTRIBUTES), *(f"WSGIResource.{n}" for n in WSGI_RESOURCE_ATTRIBUTES),
    *(f"the TCP transport's {n}" for n in TRANSPORT_ATTRIBUTES),
)  # fmt: skip


class TLSProtocolBase(_tls.TLSMemoryBIOProtocol):
    """Twisted's TLS protocol with its private state behind named properties."""

    #: The socket's transport (a transport, a push producer and a consumer at once, which no one
    #: Twisted interface says); None before makeConnection and after the connection is lost.
    transport: Any

    #: The server end of the connection (janustls' ports): its handshake begins with the
    #: client's first bytes, not at connect.
    server_side = True

    def makeConnection(self, transport: Any) -> None:
        """Twisted's `makeConnection`, with the socket's interfaces declared once.

        Twisted declares them one at a time (each declaration replaces the one before, so
        only the last stays), then all of them again as it connects the application, and
        marks itself connected and registered twice: about 150 Python calls of
        zope.interface per connection for what one declaration does.  The end state is
        Twisted's: the protocol provides what the socket provides, registered once, the
        application connected.
        """
        factory = self.factory
        # Twisted 25 and later keep the creator as `_creatorCallable`; 24 has the method
        # `_createConnection` (the floor CI tests).
        create = getattr(factory, "_creatorCallable", None) or getattr(factory, "_createConnection")  # noqa: B009  # a name mypy's stubs (Twisted 26) lack
        self._tlsConnection = create(self)
        self._appSendBuffer = []
        provided = providedBy(transport)
        if self._connectWrapped:
            directlyProvides(self, provided)  # as ProtocolWrapper.makeConnection leaves it
        else:
            interfaces = list(provided)
            if interfaces:
                directlyProvides(self, interfaces[-1])  # as Twisted's loop leaves it
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            self.wrappedProtocol.makeConnection(self)
        if not self.server_side:
            self._checkHandshakeStatus()
        # A server has nothing to send before the ClientHello: its first handshake step is
        # taken when the client's first bytes arrive (`dataReceived` takes it while the
        # handshake is not done), sparing a `do_handshake` and a send-BIO read, each ending
        # in a WantReadError, per connection.

    # -- the memory-BIO traffic ------------------------------------------------------------------
    #
    # Twisted's methods of the same names, with the same branches, through `_sslio`: no 32 KiB
    # buffer allocated per read and no WantReadError raised when OpenSSL has nothing to give,
    # which is most reads (several per handshake and per exchange), and no SysCallError for a
    # client that leaves without close_notify.  Other errors still come as pyOpenSSL's
    # exceptions.  Guarded by the TLS tests (handshakes, refusals, close_notify, large and
    # pipelined writes), `tests/test_sslio.py` and `tests/test_twisted_private.py`.

    def dataReceived(self, data: bytes) -> None:
        _sslio.feed(self._tlsConnection, data)
        if not self._handshakeDone:
            self._checkHandshakeStatus()
            if not self._handshakeDone:
                return
        if self._appSendBuffer:
            self._unbufferPendingWrites()
        self._flushReceiveBIO()

    def _checkHandshakeStatus(self) -> None:
        if self._aborted:
            return
        connection = self._tlsConnection
        result = _sslio.handshake_step(connection)
        if result == 1:
            self._handshakeDone = True
            if IHandshakeListener.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.handshakeCompleted()
            return
        if _sslio.error_of(connection, result) == _sslio.WANT_READ:
            self._flushSendBIO()
            return
        try:
            _sslio.raise_for(connection, result)
        except SSL.WantReadError:
            self._flushSendBIO()
        except SSL.Error:
            self._tlsShutdownFinished(Failure())

    def _flushSendBIO(self) -> None:
        data = _sslio.take_output(self._tlsConnection)
        if data:
            self.transport.write(data)

    #: The client ended its direction with close_notify and the connection stays open the
    #: other way (`HalfCloseTLSProtocol`).
    _read_closed = False

    def _flushReceiveBIO(self) -> None:
        self._read_records(None)

    def _read_records(self, half_close: Any) -> None:
        """Twisted's `_flushReceiveBIO` loop.  `half_close`: the protocol that hears the client's
        close_notify as `readConnectionLost` (the client ended its direction only, a proxy
        port's); None: answer it and close both ways, as Twisted does."""
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            got = _sslio.read(connection)
            if type(got) is bytes:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, got)
                continue
            assert isinstance(got, int)
            error = _sslio.error_of(connection, got)
            if error == _sslio.WANT_READ:
                break
            if error != _sslio.ZERO_RETURN:
                if _sslio.ended_without_close_notify(error):
                    self._ended_without_close_notify()
                    continue
                try:
                    _sslio.raise_for(connection, got)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    pass  # the close_notify, below
                except SSL.Error:
                    self._tlsShutdownFinished(Failure())
                    continue
            # The client's close_notify.
            if half_close is not None:
                self._read_closed = True
                half_close.readConnectionLost()
                break
            self._shutdownTLS()  # answered, then closed (Twisted's branch)
            self._tlsShutdownFinished(None)
        self._flushSendBIO()

    def _ended_without_close_notify(self) -> None:
        """Twisted's `_tlsShutdownFinished` for a client that closed TCP without TLS's close_notify
        (most clients do), without pyOpenSSL's SysCallError and a Failure of it: the
        application hears ConnectionLost, as Twisted's `_representsEOF` makes it."""
        if self._reason is None:
            self._reason = Failure(CONNECTION_LOST)
        self._lostTLSConnection = True
        self._flushSendBIO()
        self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        if type(data) is not bytes:
            data = bytes(data)  # a bytearray or memoryview: what SSL_write is given must not change under it
        connection = self._tlsConnection
        total = len(data)
        done = 0
        while done < total:
            # One record's worth at a time (16 KiB), as Twisted sends it.
            chunk = data if done == 0 and total <= 16384 else data[done : done + 16384]
            result = _sslio.write(connection, chunk)
            if result > 0:
                done += result
                self._flushSendBIO()
                continue
            if _sslio.error_of(connection, result) == _sslio.WANT_READ:
                self._bufferedWrite(data[done:])
                return
            try:
                _sslio.raise_for(connection, result)
            except SSL.WantReadError:
                self._bufferedWrite(data[done:])
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            return

    @property
    def handshake_done(self) -> bool:
        return bool(self._handshakeDone)

    @property
    def tls_lost(self) -> bool:
        """Whether the TLS connection is gone (closed, failed or aborted)."""
        return bool(self._lostTLSConnection)

    @property
    def app_send_buffer(self) -> list[bytes]:
        """Application bytes written before the handshake finished, not yet encrypted."""
        return self._appSendBuffer

    @property
    def app_producer(self) -> Any:
        """The application's producer as Twisted's TLS layer holds it (a ProducerMembrane), or None."""
        return self._producer

    @app_producer.setter
    def app_producer(self, membrane: Any) -> None:
        self._producer = membrane

    def shutdown_tls(self) -> None:
        self._shutdownTLS()

    def transport_unsent(self) -> int:
        """Bytes the socket has not sent yet plus those waiting for the handshake (best effort)."""
        t = self.transport
        try:
            unsent: int = (
                len(t.dataBuffer) - t.offset + t._tempDataLen + sum(map(len, self._appSendBuffer))
            )  # a TCP transport's private buffers, checked by test_twisted_private
            return unsent
        except (AttributeError, TypeError):
            return 0

    def socket_buffered(self) -> int:
        """What the socket compares with its bufferSize to pause its producer (its unsent bytes);
        more than any mark for a transport that cannot say."""
        t = self.transport
        try:
            buffered: int = len(t.dataBuffer) + t._tempDataLen  # as above
            return buffered
        except (AttributeError, TypeError):
            return 1 << 62


class HalfCloseTLSProtocol(TLSProtocolBase):
    """A TLS protocol whose client may end its direction only (a proxy port's).

    `half_close_target`: returning a protocol makes the client's close_notify end only the
    client's direction (that protocol hears `readConnectionLost`), as TCP's half-close;
    None keeps Twisted's behaviour (close both ways).  Only protocols that can half-close
    take this read loop: it asks the hook on every read.
    """

    def half_close_target(self) -> Any:
        return None

    def _flushReceiveBIO(self) -> None:
        """`TLSProtocolBase._read_records`, the client's close_notify ending its direction only
        when `half_close_target` names a protocol (the half-close test guards it)."""
        wrapped = self.half_close_target()
        if wrapped is not None and self._read_closed:
            self._flushSendBIO()
            return
        self._read_records(wrapped)


def flush_send(tls_protocol: _tls.TLSMemoryBIOProtocol) -> None:
    """Send what OpenSSL has written into the TLS protocol's BIO (after a handshake step janustls drove)."""
    tls_protocol._flushSendBIO()


def received_header_size(channel: http.HTTPChannel) -> int:
    """Bytes of the current request's header section an HTTP channel has received so far."""
    return channel._receivedHeaderSize


def membrane_inner(membrane: Any) -> Any:
    """The producer a ProducerMembrane wraps."""
    return membrane._producer


def transport_producer(transport: Any) -> Any:
    """The producer registered with a TLS transport (twisted.web's channel registers itself), or None."""
    return getattr(transport, "_producer", None)


def wsgi_threadpool(resource: wsgi.WSGIResource) -> Any:
    return resource._threadpool


def set_wsgi_threadpool(resource: wsgi.WSGIResource, pool: Any) -> None:
    """A WSGI resource built before the reactor ran gets the reactor's pool when its port starts."""
    resource._threadpool = pool


def wsgi_response(resource: wsgi.WSGIResource, request: Any, environ: Callable[[dict[str, Any]], None]) -> Any:
    """twisted.web's WSGI response for `request`, its environ completed by `environ`, started."""
    response = WSGIResponse(resource._reactor, resource._threadpool, resource._application, request)
    environ(response.environ)
    response.start()
    return response


def request_line(channel: http.HTTPChannel) -> tuple[bytes | None, bytes | None]:
    """The method and path of the request a channel is reading (before its body arrives)."""
    command, path = getattr(channel, "_command", None), getattr(channel, "_path", None)
    return (command if isinstance(command, bytes) else None, path if isinstance(path, bytes) else None)
