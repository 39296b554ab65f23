"""Connections that leave HTTP/1.1 after an Upgrade: an ASGI app's WebSocket (framed by
wsproto) and a `forward` rule's tunnel to its backend (spliced both ways after the backend's
101).  The channel hands the connection over (`JanusChannel.tunnel`): every later byte from
the client goes to `data_received`, and the end of the connection to `connection_lost`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from janustls.ports.web.asgi import AsgiApp

__all__ = ["WebSocketTunnel", "ForwardTunnel", "handshake_bytes"]


def handshake_bytes(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request head as sent (llhttp validated it), for wsproto to read the handshake from."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    lines += [b"%s: %s\r\n" % (n, v) for n, v in headers]
    return b"".join(lines) + b"\r\n"


class WebSocketTunnel:
    """One ASGI WebSocket: wsproto frames, the app's messages, in the asyncio loop."""

    __slots__ = ("_bytes", "_text", "accepted", "app", "close", "closed", "inbox", "on_error", "scope", "write", "ws")

    def __init__(self, app: AsgiApp, scope: dict[str, Any], write: Callable[[bytes], None], close: Callable[[], None],
                 on_error: Callable[[Failure], None]) -> None:  # fmt: skip
        self.app = app
        self.scope = scope
        self.write = write
        self.close = close
        self.on_error = on_error
        self.ws = WSConnection(ConnectionType.SERVER)
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepted = False
        self.closed = False
        self._text: list[str] = []
        self._bytes: list[bytes] = []

    def start(self, head: bytes, rest: bytes) -> None:
        self.data_received(head + rest)
        loop = asyncio.get_running_loop()
        defer.Deferred.fromFuture(loop.create_task(self._run())).addErrback(self._failed)

    async def _run(self) -> None:
        await self.app.app(self.scope, self.inbox.get, self._send)
        if not self.closed:
            self._send_frame(CloseConnection(code=1000) if self.accepted else RejectConnection(status_code=500))
            self._finish()

    def _failed(self, failure: Failure) -> None:
        self.on_error(failure)
        if not self.closed:
            try:
                self._send_frame(CloseConnection(code=1011) if self.accepted else RejectConnection(status_code=500))
            except LocalProtocolError:
                pass
            self._finish()

    def _send_frame(self, event: Any) -> None:
        self.write(self.ws.send(event))

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.close()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.closed:
            return
        if kind == "websocket.accept":
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
            self._send_frame(AcceptConnection(subprotocol=message.get("subprotocol"), extra_headers=headers))
            self.accepted = True
        elif kind == "websocket.send":
            if message.get("bytes") is not None:
                self._send_frame(Message(data=bytes(message["bytes"])))
            else:
                self._send_frame(Message(data=str(message.get("text") or "")))
        elif kind == "websocket.close":
            if self.accepted:
                self._send_frame(
                    CloseConnection(code=int(message.get("code", 1000)), reason=message.get("reason") or None)
                )
            else:
                self._send_frame(RejectConnection(status_code=403))
            self._finish()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a websocket scope")

    def data_received(self, data: bytes) -> None:
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self.inbox.put_nowait({"type": "websocket.connect"})
                elif isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        self.inbox.put_nowait({"type": "websocket.receive", "text": "".join(self._text)})
                        self._text.clear()
                elif isinstance(event, BytesMessage):
                    self._bytes.append(bytes(event.data))
                    if event.message_finished:
                        self.inbox.put_nowait({"type": "websocket.receive", "bytes": b"".join(self._bytes)})
                        self._bytes.clear()
                elif isinstance(event, Ping):
                    self._send_frame(event.response())
                elif isinstance(event, CloseConnection):
                    if not self.closed:
                        self._send_frame(event.response())
                    self.inbox.put_nowait({"type": "websocket.disconnect", "code": event.code})
                    self._finish()
        except (RemoteProtocolError, LocalProtocolError):
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1002})
            self._finish()

    def connection_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})


class _Backend(Protocol):
    def __init__(self, tunnel: ForwardTunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.backend_data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # a None default (Twisted's is connectionDone); the reason is not read
        self.tunnel.backend_lost()


class _ResponseEnd:
    """httptools callbacks: only the end of a (non-101) response matters."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


#: Client bytes held (after the request head) until the backend's 101; more closes the connection.
_HELD_MAX = 1 << 16


class ForwardTunnel:
    """An Upgrade on a `forward` rule: the request head (identity headers set, forged ones gone)
    goes to the backend; only after the backend answers 101 are bytes spliced both ways.  Any
    other answer is relayed to the client and the connection closes at its end: the client's
    later bytes never reach the backend unparsed (no request smuggled past the rule table)."""

    __slots__ = ("_end_seen", "_parser", "backend", "close", "closed", "head", "held", "spliced", "write")

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self.write = write
        self.close = close
        self.backend: Any = None
        self.held: list[bytes] = []
        self.head = b""
        self.spliced = False
        self.closed = False
        self._end_seen = _ResponseEnd()
        self._parser = httptools.HttpResponseParser(self._end_seen)

    def start(self, reactor: Any, host: str, port: int, head: bytes, rest: bytes) -> None:
        self.head = head
        if rest:
            self.held.append(rest)
        d = connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=10), _Backend(self))
        d.addCallbacks(self._connected, self._unreachable)

    def _connected(self, backend: _Backend) -> None:
        assert backend.transport is not None  # connected
        if self.closed:
            backend.transport.loseConnection()
            return
        self.backend = backend
        backend.transport.write(self.head)

    def _unreachable(self, failure: Failure) -> None:
        body = b"The backend cannot be reached.\n"
        self.write(
            b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self._end()

    def backend_data(self, data: bytes) -> None:
        if self.spliced:
            self.write(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._parser.get_status_code() == 101:  # switched: splice, the held bytes first
                self.spliced = True
                self.write(data)
                held, self.held = self.held, []
                if held and self.backend is not None:
                    self.backend.transport.write(b"".join(held))
                return
        except httptools.HttpParserError:
            self.write(data)
            self._end()
            return
        self.write(data)
        if self._end_seen.done:  # a whole non-101 answer: nothing more goes either way
            self._end()

    def data_received(self, data: bytes) -> None:
        if self.spliced:
            if self.backend is not None:
                self.backend.transport.write(data)
            return
        self.held.append(data)
        if sum(map(len, self.held)) > _HELD_MAX:
            self._end()

    def backend_lost(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self.close()
            if self.backend is not None:
                self.backend.transport.loseConnection()

    def connection_lost(self) -> None:
        self.closed = True
        if self.backend is not None:
            self.backend.transport.loseConnection()
