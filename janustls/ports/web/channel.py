"""The HTTP/1.1 channel of a webserv port: llhttp (through httptools) parses, twisted.web's
`Request` carries each request to the rule actions, with the port's timeouts and size limits.

Why this split: parsing HTTP is where request smuggling lives, so it is left to llhttp, the
parser of Node.js (fuzzed, strict by default: conflicting Content-Length/Transfer-Encoding,
obs-fold, invalid header names and values and a bare LF are errors; used by uvicorn through
the same binding).  twisted.web's line parser is no longer used.  Handlers keep the request
API they had (twisted.web's `Request`, plus janustls's certificate calls): `call` handlers,
mounted twisted.web resources, the WSGI container and `forward` (twisted.web's reverse proxy)
all take one, so each request is still one `JanusRequest`, built once its headers are read.

The channel implements what `Request` asks of a channel (write, writeHeaders, requestDone,
the producer calls, getPeer/getHost/isSecure) and nothing of `HTTPChannel`'s line machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httptools
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from janustls.events import emit
from janustls.ports.base import address_text
from janustls.ports.web.request import JanusRequest, WebPortProtocol
from janustls.tls._twisted import PullToPush

__all__ = ["HttpLimits", "JanusChannel", "JanusSite", "REASONS"]


@dataclass(frozen=True)
class HttpLimits:
    """A webserv port's HTTP limits (seconds; 0 = no limit for the timeouts)."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_header_bytes: int


REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large"}
#: Bytes read from the client and kept unparsed while a request is answered, above which
#: reading from the client pauses until the request is done (pipelined requests wait there).
_EAGER_READ = 1 << 16
_TIMEOUT_EVENTS = {
    "idle": "janustls.web.keepalive_timeout",
    "header": "janustls.web.header_timeout",
    "body": "janustls.web.body_timeout",
}
_TIMEOUT_WHAT = {"idle": "started", "header": "header section", "body": "body"}


class _HeaderSectionTooLarge(Exception):
    """Raised from a parser callback: the header section passed max_header_bytes."""


class _Parsed:
    """A request being parsed: its request line and headers until the `Request` is built."""

    __slots__ = (
        "chunked",
        "close",
        "expect",
        "headers",
        "keep",
        "length",
        "method",
        "request",
        "size",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.length = 0
        self.chunked = False
        self.request: JanusRequest | None = None
        self.expect = False
        self.keep = False
        self.version = b"HTTP/1.1"
        self.method = b"GET"
        self.close = False


class JanusChannel:
    """One connection's HTTP/1.1: llhttp parses, requests are answered one at a time, in order.

    One deadline follows the request cycle: `keepalive_timeout` while waiting for a request
    (the first included), `header_timeout` from its first byte to the end of its headers,
    `body_timeout` for its body; none while the application answers.  Each limit answers
    (when no response is under way) and closes through the port protocol's close.  The
    site's `PhaseDeadlines` keeps every channel's deadline (one timer per port, not one per
    connection).

    Pipelining: requests parsed from one read wait in order; bytes read while a request is
    answered wait unparsed (reading pauses above `_EAGER_READ` of them), and no next request
    starts while the client's unsent output is over the port's high-water mark.
    """

    __slots__ = (
        "__weakref__",
        "_advancing",
        "_buffer",
        "_buffered",
        "_current",
        "_deadline",
        "_error",
        "_head_seen",
        "_host",
        "_in_head",
        "_out_paused",
        "_parsed",
        "_parser",
        "_peer",
        "_phase",
        "_read_paused",
        "_request_producer",
        "_request_streaming",
        "_upgraded",
        "closing",
        "limits",
        "persistent",
        "requests",
        "site",
        "transport",
        "tunnel",
    )  # fmt: skip

    #: A request's whole response may go out as one write of HTTP/1.1 bytes (JanusRequest.respond).
    http11_channel = True

    def __init__(self, site: JanusSite) -> None:
        self.site = site
        self.limits = site.limits
        self.transport: Any = None
        #: After an Upgrade taken by a rule: what gets the client's bytes (`take_over`).
        self.tunnel: Any = None
        self.persistent = True
        self.closing = False
        #: Requests parsed and not yet answered, oldest first; the first is being answered once
        #: `_current` is it.
        self.requests: list[JanusRequest] = []
        self._current: JanusRequest | None = None
        self._parser: Any = None
        self._parsed: _Parsed | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._read_paused = False
        self._out_paused = False
        self._advancing = False
        self._error: tuple[int, str, str, dict[str, Any]] | None = None
        self._upgraded = False
        self._head_seen = 0
        self._in_head = True
        self._request_producer: Any = None
        self._request_streaming = False
        self._phase = "idle"
        self._deadline: float | None = None
        self._peer: Any = None
        self._host: Any = None

    # -- the connection -------------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        transport.registerProducer(self, True)
        self._enter("idle")

    def _janus_protocol(self) -> WebPortProtocol | None:
        return getattr(self.transport, "wrappedProtocol", None)

    def _event(self, event: str, text: str, **fields: Any) -> None:
        proto = self._janus_protocol()
        if proto is not None:
            emit(event, text, port=proto.factory.runtime.port.name, peer=address_text(proto.peer_address()), **fields)

    # -- what twisted.web's Request asks of its channel ---------------------------------------

    def getPeer(self) -> Any:
        """The client's address, asked of the socket once per connection."""
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> Any:
        """The server's address, asked of the socket once per connection."""
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()
        return host

    def isSecure(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_whole(self, data: bytes) -> None:
        """A whole response in one piece: out at once when written outside a read (an asgi app's
        task, a Deferred), gathered with the turn's other writes otherwise."""
        transport = self.transport
        whole = getattr(transport, "write_whole", None)
        if whole is not None:
            whole(data)
        else:
            transport.write(data)

    def writeSequence(self, iovec: Any) -> None:
        self.transport.write(b"".join(iovec))

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        parts = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._request_producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self._request_producer} was never unregistered."
            )
        if not streaming:
            producer = PullToPush(producer, self)
        self._request_producer, self._request_streaming = producer, streaming
        if not streaming:
            producer.startStreaming()
        elif self._out_paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        producer, self._request_producer = self._request_producer, None
        if producer is not None and not self._request_streaming:
            producer.stopStreaming()

    def requestDone(self, request: JanusRequest) -> None:
        """The request answered: close, or go on with the next one."""
        if request is not self._current:
            return
        self._current = None
        if self.requests and self.requests[0] is request:
            self.requests.pop(0)
        if not self.persistent or self.closing:
            self.loseConnection()
            return
        self._enter(self._parse_phase())
        if not self._advancing:
            self._advance()

    # -- the producer the TLS layer pauses (the client's unsent output over the mark) ---------

    def pauseProducing(self) -> None:
        self._out_paused = True
        if self._request_producer is not None:
            self._request_producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._out_paused = False
        if self._request_producer is not None:
            self._request_producer.resumeProducing()
        if not self.closing and not self._advancing:
            self._advance()

    def stopProducing(self) -> None:
        if self._request_producer is not None:
            self._request_producer.stopProducing()

    # -- reading ------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.data_received(data)
            return
        if self.closing or not data:
            return
        if self._upgraded:
            if self.requests and self.requests[-1].upgrade_rest is not None:
                self.requests[-1].upgrade_rest += data  # for the rule that may take the Upgrade
            return
        if self._current is not None or self.requests or self._error is not None or self._buffer:
            self._buffer.append(data)
            self._buffered += len(data)
            if self._buffered > _EAGER_READ and not self._read_paused:
                self._read_paused = True
                self.transport.pauseProducing()
            if not self._advancing:
                self._advance()
            return
        self._feed(data)
        if not self._advancing:
            self._advance()

    def _feed(self, data: bytes) -> None:
        """Parse `data`, feeding llhttp no more of a header section than max_header_bytes."""
        parser = self._parser
        if parser is None:  # made for each request: an idle connection holds none (about 1 KiB)
            parser = self._parser = httptools.HttpRequestParser(self)
        limit = self.limits.max_header_bytes
        try:
            while data and not self.closing and self._error is None and not self._upgraded:
                if self._in_head:
                    room = limit - self._head_seen
                    if room <= 0:
                        raise _HeaderSectionTooLarge
                    chunk, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                    self._head_seen += len(chunk)
                else:
                    chunk, data = data, b""
                try:
                    parser.feed_data(chunk)
                except httptools.HttpParserUpgrade as e:
                    offset = e.args[0] if e.args and isinstance(e.args[0], int) else len(chunk)
                    data = chunk[offset:] + data
                    raise
        except httptools.HttpParserUpgrade:
            # CONNECT, or an Upgrade: what follows is not HTTP/1.1.  A rule that takes the
            # Upgrade (asgi: a WebSocket; forward: a tunnel) gets the connection and these bytes;
            # any other answers as plain HTTP and the connection closes after it.
            self._upgraded = True
            if self.requests:
                request = self.requests[-1]
                request.janus_keep = False  # type: ignore[attr-defined]  # the channel's own field on the request
                request.upgrade_rest = data
        except _HeaderSectionTooLarge:
            self._fail(
                431,
                "janustls.web.headers_too_large",
                "port {port}: header section of {peer} over {limit} bytes",
                limit=limit,
            )
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeaderSectionTooLarge):
                self._fail(
                    431,
                    "janustls.web.headers_too_large",
                    "port {port}: header section of {peer} over {limit} bytes",
                    limit=limit,
                )
            elif isinstance(e.__context__, httptools.HttpParserError):  # refused by a callback (the HTTP version)
                self._fail(
                    400,
                    "janustls.web.bad_request",
                    "port {port}: unreadable request from {peer}: 400 ({why})",
                    why=str(e.__context__),
                )
            elif not self.closing:
                raise
        except httptools.HttpParserError as e:
            self._fail(
                400,
                "janustls.web.bad_request",
                "port {port}: unreadable request from {peer}: 400 ({why})",
                why=str(e) or type(e).__name__,
            )

    def _fail(self, status: int, event: str, text: str, **fields: Any) -> None:
        """A malformed request: answered after those before it, then the connection closes."""
        if self._error is None:
            self._error = (status, event, text, fields)
        self._buffer.clear()
        self._buffered = 0

    def _advance(self) -> None:
        """Answer what waits, in order: queued requests, then buffered bytes, then an error."""
        self._advancing = True
        try:
            while not self.closing:
                if self._current is not None:
                    return
                if self.requests:
                    if self._out_paused or getattr(self.transport, "output_full", False):
                        return  # resumeProducing goes on
                    request = self.requests[0]
                    self._current = request
                    self.persistent = request.janus_keep  # type: ignore[attr-defined]  # the channel's own field on the request
                    self._enter("busy")  # no deadline while the application answers
                    request.requestReceived(request.method, request.uri, request.clientproto)
                    continue
                if self._error is not None:
                    status, event, text, fields = self._error
                    self._event(event, text, **fields)
                    self.refuse(status)
                    return
                if self._buffer:
                    data = b"".join(self._buffer)
                    self._buffer.clear()
                    self._buffered = 0
                    if self._read_paused:
                        self._read_paused = False
                        self.transport.resumeProducing()
                    self._feed(data)
                    continue
                phase = self._parse_phase()
                if phase != self._phase:  # the same phase keeps its deadline (a trickle gains nothing)
                    self._enter(phase)
                if self._parsed is None and not self._upgraded:
                    self._parser = None  # between requests: nothing to keep
                return
        finally:
            self._advancing = False

    def _parse_phase(self) -> str:
        if self._parsed is None:
            return "idle"
        return "header" if self._in_head else "body"

    # -- llhttp's callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The header deadline starts in this same turn, when `_advance` finds the head still
        # incomplete after this read; a request that came whole (most) never sets it.
        self._parsed = _Parsed()
        self._in_head = True
        self._head_seen = 0

    def on_url(self, url: bytes) -> None:
        parsed = self._parsed
        assert parsed is not None
        parsed.url += url
        parsed.size += len(url)
        if parsed.size > self.limits.max_header_bytes:
            raise _HeaderSectionTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        parsed = self._parsed
        assert parsed is not None
        parsed.size += len(name) + len(value) + 4
        if parsed.size > self.limits.max_header_bytes:
            raise _HeaderSectionTooLarge
        parsed.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            parsed.length = int(value)
        elif lower == b"transfer-encoding":
            parsed.chunked = True
        elif lower == b"expect" and value.strip().lower() == b"100-continue":
            parsed.expect = True
        elif lower == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
            parsed.close = True

    def on_headers_complete(self) -> None:
        parsed = self._parsed
        assert parsed is not None
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise httptools.HttpParserError(f"HTTP/{version} is not served")
        parsed.version = b"HTTP/1.1" if version == "1.1" else b"HTTP/1.0"
        parsed.method = parser.get_method()
        request: JanusRequest = self.site.requestFactory(self)
        parsed.request = request
        parsed.keep = version == "1.1" and not parsed.close
        if version == "1.1" and parsed.close:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        request.janus_keep = parsed.keep  # type: ignore[attr-defined]  # the channel's own field on the request
        # as sent, in order: the request's Headers are made from them when first asked for
        request.raw_headers = parsed.headers
        request.method, request.uri, request.clientproto = parsed.method, parsed.url, parsed.version
        length = None if parsed.chunked else parsed.length
        if length != 0:
            self._enter_unless_busy("body")
        request.gotLength(length)
        if self.closing:
            return
        if parsed.expect and version == "1.1" and length != 0 and self._current is None and not self.requests:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        parsed = self._parsed
        if parsed is None or parsed.request is None or self.closing:
            return
        parsed.request.handleContentChunk(body)

    def on_message_complete(self) -> None:
        parsed, self._parsed = self._parsed, None
        self._in_head = True
        self._head_seen = 0
        if parsed is None or parsed.request is None or self.closing:
            return
        request = parsed.request
        if request.over_limit:
            return
        self.requests.append(request)
        proto = self._janus_protocol()
        if proto is not None:
            proto.progress()  # idle_timeout: a whole request received

    # -- limits ---------------------------------------------------------------------------------

    def _enter_unless_busy(self, phase: str) -> None:
        if self._current is None and not self.requests:
            self._enter(phase)

    def _enter(self, phase: str) -> None:
        self._phase = phase
        site = self.site
        seconds = site.phase_limits.get(phase, 0)
        if not seconds or self.closing:
            self._deadline = None
            if phase != "busy" and site.phase_step:  # busy: the next phase's deadline replaces the entry
                site.deadlines.discard(self)
            return
        deadlines = site._deadlines or site.deadlines
        self._deadline = deadline = deadlines.reactor.seconds() + seconds
        deadlines.set(self, deadline)

    def expired(self, now: float) -> None:
        """The port's sweep found this channel's deadline passed (as it was when set)."""
        deadline = self._deadline
        if deadline is None or self.closing:
            return
        if deadline > now:  # moved on since: watched again
            self.site.deadlines.set(self, deadline)
            return
        phase = self._phase
        self._event(_TIMEOUT_EVENTS[phase], "port {port}: closing {peer}: no complete request {what} within {seconds}s",
                    what=_TIMEOUT_WHAT[phase], seconds=self.site.phase_limits[phase])  # fmt: skip
        self.refuse(408 if phase != "idle" else None)

    def refuse_body(self, request: JanusRequest, limit: int) -> None:
        self._event("janustls.web.body_too_large", "port {port}: body of {peer} on {path} over {limit} bytes: 413",
                    path=(request.uri or b"").decode("latin-1"), limit=limit)  # fmt: skip
        self.refuse(413, f"A request on this path may carry at most {limit} bytes.")

    def refuse(self, status: int | None, message: str = "") -> None:
        """Answer `status` (unless a response is under way) and close the connection."""
        if self.closing:
            return
        answering = self._current is not None or bool(self.requests)
        if status is not None and not answering:
            title = REASONS[status]
            body = f"{status} {title}\n{message}\n".encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (status, title.encode(), len(body), body))  # fmt: skip
        self.loseConnection()

    def loseConnection(self) -> None:
        """Every close of the channel goes through the port protocol's close."""
        self.closing = True
        self.persistent = False
        self._enter("closed")
        proto = self._janus_protocol()
        if proto is not None:
            proto.close()
        elif self.transport is not None:
            self.transport.loseConnection()

    def take_over(self, tunnel: Any) -> bytes:
        """The connection leaves HTTP/1.1 (after an Upgrade): later bytes go to `tunnel`.
        Returns the bytes already read after the request head."""
        request = self._current
        rest = b""
        if request is not None:
            rest, request.upgrade_rest = request.upgrade_rest or b"", None
        self.tunnel = tunnel
        self._buffer.clear()
        self._buffered = 0
        self._enter("closed")  # no HTTP deadline; the port's idle_timeout still applies,
        proto = self._janus_protocol()
        if proto is not None:
            proto.bytes_are_progress = True  # counted from the last byte either way, as on a srvsock port
        return rest

    def connectionLost(self, reason: Failure) -> None:
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.connection_lost()
        self.closing = True
        self._enter("closed")
        self._buffer.clear()
        waiting = list(self.requests)
        if self._current is not None and self._current not in waiting:
            waiting.insert(0, self._current)
        parsed = self._parsed
        if parsed is not None and parsed.request is not None and parsed.request not in waiting:
            waiting.append(parsed.request)
        self.requests.clear()
        self._current = self._parsed = None
        for request in waiting:
            request.connectionLost(reason)


class PhaseDeadlines:
    """The HTTP deadlines of a port's channels, kept by one timer instead of one each.

    A channel's deadline is set (a dict store) each time its phase changes and dropped when
    it has none; a sweep a few times per shortest limit tells the late ones (`expired`), so a
    client gets between the limit and the limit plus a quarter of the shortest one (at most
    one second more).
    """

    __slots__ = ("_loop", "pending", "reactor", "step")

    def __init__(self, reactor: IReactorTime, step: float) -> None:
        self.reactor = reactor
        self.step = step
        self.pending: dict[JanusChannel, float] = {}
        self._loop: LoopingCall | None = None

    def set(self, channel: JanusChannel, deadline: float) -> None:
        self.pending[channel] = deadline
        if self._loop is None:
            self._loop = LoopingCall(self._sweep)
            self._loop.clock = self.reactor
            self._loop.start(min(1.0, self.step / 4), now=False)

    def discard(self, channel: JanusChannel) -> None:
        self.pending.pop(channel, None)

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        late = [c for c, deadline in self.pending.items() if deadline <= now]
        for channel in late:
            del self.pending[channel]
            channel.expired(now)
        if not self.pending and self._loop is not None:
            self._loop.stop()
            self._loop = None


class JanusSite(Site):
    """No per-request access log line (the events and the status listener count requests).
    The port's HTTP limits, and what the channels derive from them, once per port."""

    noisy = False
    requestFactory = JanusRequest
    _limits: HttpLimits
    #: The limit of each timed phase (seconds; 0 = none), and the shortest of them.
    phase_limits: dict[str, float] = {}  # noqa: RUF012  # never mutated: the limits setter assigns each site its own
    phase_step = 0.0
    reactor: Any
    _deadlines: PhaseDeadlines | None = None

    @property
    def deadlines(self) -> PhaseDeadlines:
        """The channels' deadlines (made on first use: the reactor is set after the site is built)."""
        if self._deadlines is None:
            self._deadlines = PhaseDeadlines(self.reactor, self.phase_step or 1.0)
        return self._deadlines

    @property
    def limits(self) -> HttpLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: HttpLimits) -> None:
        self._limits = limits
        self.phase_limits = {
            "idle": limits.keepalive_timeout,
            "header": limits.header_timeout,
            "body": limits.body_timeout,
        }
        self.phase_step = min((s for s in self.phase_limits.values() if s), default=0.0)

    def buildProtocol(self, addr: Any) -> JanusChannel:  # type: ignore[override]  # our channel stands in for twisted.web's HTTPChannel
        return JanusChannel(self)

    def log(self, request: Any) -> None:
        pass
