"""HTTP/2 on a webserv port: the `h2` library's state machine, driven here, with the port's rules.

Chosen after the handshake when ALPN negotiated `h2` (ports with `http2 = yes`).  Each stream
becomes one `JanusRequest`, built once its headers are read and handed to `Dispatch.serve`
through `Request.requestReceived`, as the HTTP/1.1 channel does: the same rules, exception
rules, identity verdicts, body limits and actions answer both protocols.

Why `h2.connection.H2Connection` driven here rather than twisted.web's private `H2Connection`:
that one builds the request before the method and path are set on it (so a rule's max_body
cannot be known when the length is), has no per-stream body deadline, and closes floods
without saying which; a port must also answer a stream with HTTP_1_1_REQUIRED.  Driving the
same `h2` state machine directly keeps every limit and event here, with no private names.

HTTP/2 forbids asking for a certificate mid-connection (renegotiation: RFC 7540 9.2.1; TLS 1.3
post-handshake authentication: RFC 8740).  A stream whose rule needs a certificate the
connection has not sent, where HTTP/1.1 could ask for one, is reset with HTTP_1_1_REQUIRED
(0xd): browsers and curl retry the request over HTTP/1.1, where it is asked for as before.

Flow control: the client's DATA is acknowledged as the request takes it (bodies are bounded by
the rule's max_body); the response of each stream waits in its own queue until the client's
window for the stream and the connection lets it out, and the TLS layer's back-pressure pauses
all sending.  A stream's producer (twisted.web's, WSGI's, the forward client's) is paused while
more than `STREAM_HIGH` bytes of its response wait.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from janustls.core.rules import Rule
from janustls.events import emit
from janustls.ports.base import address_text
from janustls.ports.web.request import JanusRequest
from janustls.tls._twisted import PullToPush


class WebProtocol(Protocol):
    """What the channel asks of the port protocol (`port.WebProtocol`)."""

    @property
    def factory(self) -> Any: ...
    def can_request_over_http11(self) -> tuple[bool, str]: ...
    def progress(self) -> None: ...
    def close(self) -> None: ...
    def peer_address(self) -> Any: ...


__all__ = ["H2Channel", "H2Limits", "H2Stream", "STREAM_HIGH", "FLOOD_WINDOW"]

#: Unsent response bytes of one stream above which its producer is paused.
STREAM_HIGH = 1 << 16
#: The floods (resets, pings, settings) are counted over windows of this many seconds.
FLOOD_WINDOW = 10.0
#: Connection-specific header fields HTTP/2 forbids (RFC 9113 8.2.2): never sent.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large"}


@dataclass(frozen=True)
class H2Limits:
    """A webserv port's HTTP/2 limits (docs/security.md), once per port."""

    max_streams: int
    window: int
    max_header_list: int
    max_resets: int
    max_pings: int
    max_settings: int
    body_timeout: float
    keepalive_timeout: float


class H2Stream:
    """One HTTP/2 stream: what twisted.web's `Request` asks of its channel."""

    #: Requests (and `Dispatch`) tell the protocols apart by this.
    http2 = True

    def __init__(self, channel: H2Channel, stream_id: int) -> None:
        self.h2 = channel
        self.stream_id = stream_id
        self.site = channel.site
        #: `Request.transport`, and what `JanusRequest.janus_protocol` and the ASGI sender look
        #: through: the stream itself (`wrappedProtocol`, `output_full`, `drained`).
        self.transport = self
        self.persistent = True  # set False by some answers; a stream has nothing to keep
        self.request: JanusRequest | None = None
        self.out: deque[bytes] = deque()
        self.queued = 0
        self.headers_sent = False
        #: The response head, until the stream's next turn sends it.
        self.fields: list[tuple[bytes, bytes]] | None = None
        self.done = False  # the response is complete (requestDone)
        self.closed = False  # ended or reset: nothing more goes out
        self.received = False  # END_STREAM from the client
        self.producer: Any = None
        self.streaming = False
        self.paused = False
        self.timer: IDelayedCall | None = None
        self._drained: list[defer.Deferred[None]] = []

    # -- what JanusRequest and the actions look through ----------------------------------------

    @property
    def wrappedProtocol(self) -> WebProtocol:  # noqa: N802  # the TLS transport's name, which requests look for
        return self.h2.proto

    @property
    def output_full(self) -> bool:
        return self.queued > STREAM_HIGH or self.h2.out_paused

    def drained(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if not self.output_full or self.closed:
            d.callback(None)
        else:
            self._drained.append(d)
        return d

    # -- what twisted.web's Request asks of its channel ---------------------------------------

    def getPeer(self) -> Any:  # noqa: N802  # twisted.web's name
        return self.h2.transport.getPeer()

    def getHost(self) -> Any:  # noqa: N802  # twisted.web's name
        return self.h2.transport.getHost()

    def isSecure(self) -> bool:  # noqa: N802  # twisted.web's name
        return True

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:  # noqa: N802  # twisted.web's name
        if self.closed or self.headers_sent:
            return
        self.headers_sent = True
        fields = [(b":status", code)]
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _HOP or lower.startswith(b":"):
                continue
            fields.extend((lower, v) for v in values)
        self.h2.send_headers(self, fields)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.out.append(bytes(data))
        self.queued += len(data)
        self.h2.want_send(self)
        if self.queued > STREAM_HIGH and self.producer is not None and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def writeSequence(self, iovec: Any) -> None:  # noqa: N802  # twisted.web's name
        self.write(b"".join(iovec))

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802  # twisted.web's name
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self.producer} was never unregistered."
            )
        if not streaming:
            producer = PullToPush(producer, self)
        self.producer, self.streaming, self.paused = producer, streaming, False
        if not streaming:
            producer.startStreaming()
        if self.output_full:
            self.paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:  # noqa: N802  # twisted.web's name
        producer, self.producer = self.producer, None
        if producer is not None and not self.streaming:
            producer.stopStreaming()

    # The stream is the consumer PullToPush drives (a non-streaming producer's pull).
    def pauseProducing(self) -> None:  # noqa: N802  # twisted.web's name
        pass

    def resumeProducing(self) -> None:  # noqa: N802  # twisted.web's name
        pass

    def stopProducing(self) -> None:  # noqa: N802  # twisted.web's name
        pass

    def requestDone(self, request: JanusRequest) -> None:  # noqa: N802  # twisted.web's name
        """The response is complete: END_STREAM once its queue is out."""
        if self.closed:
            return
        self.done = True
        self.h2.want_send(self)

    def loseConnection(self) -> None:  # noqa: N802  # twisted.web's name
        """A request closing its "connection" ends its stream, not the others."""
        if self.headers_sent:
            self.requestDone(self.request)  # type: ignore[arg-type]  # the stream's request (unused)
        else:
            self.h2.reset(self, h2.errors.ErrorCodes.CANCEL)

    def abortConnection(self) -> None:  # noqa: N802  # twisted.web's name
        self.h2.reset(self, h2.errors.ErrorCodes.CANCEL)

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802  # twisted.web's name for a body it cannot parse
        self.answer(400, "The request body cannot be read.")

    # -- janustls's own -----------------------------------------------------------------------

    def refuse_body(self, request: JanusRequest, limit: int) -> None:
        """A body over the rule's max_body: 413 on this stream (the connection goes on)."""
        self.h2.event("janustls.web.body_too_large", "port {port}: body of {peer} on {path} over {limit} bytes: 413",
                      path=(request.uri or b"").decode("latin-1"), limit=limit)  # fmt: skip
        self.answer(413, f"A request on this path may carry at most {limit} bytes.")

    def answer(self, status: int, message: str) -> None:
        """A plain-text answer from the channel itself, then the stream is done (reset if the
        client still sends)."""
        if self.closed:
            return
        if not self.headers_sent:
            body = f"{status} {_REASONS[status].decode()}\n{message}\n".encode()
            self.headers_sent = True
            self.h2.send_headers(self, [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", b"%d" % len(body))])  # fmt: skip
            self.out.append(body)
            self.queued += len(body)
        self.done = True
        self.h2.want_send(self)
        if self.request is not None and not self.request.finished:
            self.request.gone = True

    def retry_over_http11(self, request: JanusRequest, rule: Rule) -> bool:
        """Called by `Dispatch._ask` for a rule that needs a certificate this connection has not
        sent: reset the stream with HTTP_1_1_REQUIRED when HTTP/1.1 could ask for one (True)."""
        proto = self.h2.proto
        can, _ = proto.can_request_over_http11()
        if not can:
            return False  # HTTP/1.1 could not ask either: the rule's own answer (fallback, SSLNOCERTERR)
        self.h2.event("janustls.web.h2_http11_required",
                      "port {port}: {peer} on {path} needs a certificate: stream reset with HTTP_1_1_REQUIRED",
                      path=request.path.decode("latin-1"), rule=rule.describe(self.h2.factory.table.section))  # fmt: skip
        self.h2.reset(self, h2.errors.ErrorCodes.HTTP_1_1_REQUIRED)
        return True

    def sent_some(self) -> None:
        """Some of the queue went out: resume the producer, fire `drained` waiters."""
        if self.queued <= STREAM_HIGH and not self.h2.out_paused:
            if self.paused and self.producer is not None:
                self.paused = False
                self.producer.resumeProducing()
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def lost(self, reason: Failure) -> None:
        """The stream ended without its response (reset, the connection lost)."""
        self.closed = True
        self.out.clear()
        self.queued = 0
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.producer is not None:
            producer, self.producer = self.producer, None
            producer.stopProducing()
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)
        request = self.request
        if request is not None and not request.finished and not request.gone:
            request.connectionLost(reason)


class H2Channel:
    """One connection's HTTP/2: the h2 state machine, its streams, limits and deadlines."""

    def __init__(self, site: Any, proto: WebProtocol, limits: H2Limits) -> None:
        self.site = site
        self.proto = proto
        self.factory = proto.factory
        self.limits = limits
        self.transport: Any = None
        self.closing = False
        self.out_paused = False
        self.streams: dict[int, H2Stream] = {}
        self._sending: dict[int, H2Stream] = {}  # streams with queued output (or END_STREAM due), in order
        self._pumping = False
        self._receiving = False
        self._turn_call: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._window_start = 0.0
        self._counts = {"resets": 0, "pings": 0, "settings": 0}
        # What the client sends is validated by h2; what the port sends is made valid in
        # `H2Stream.writeHeaders` (lowercase names, no connection-specific or pseudo fields;
        # twisted.web's Headers refuse CR and LF), so h2's per-response checks are skipped.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.window,
            },
        )
        self.conn.decoder.max_header_list_size = limits.max_header_list

    @property
    def reactor(self) -> Any:
        return self.site.reactor

    def event(self, event: str, text: str, **fields: Any) -> None:
        emit(event, text, port=self.factory.runtime.port.name, peer=address_text(self.proto.peer_address()), **fields)

    # -- the connection -----------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:  # noqa: N802  # twisted's name
        self.transport = transport
        transport.registerProducer(self, True)
        self.conn.initiate_connection()
        extra = self.limits.window * 4 - 65535  # the connection's window: four streams' worth
        if extra > 0:
            self.conn.increment_flow_control_window(extra)
        self._window_start = self.reactor.seconds()
        self._flush()
        self._arm_idle()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802  # twisted's name
        if self.closing:
            return
        self._receiving = True
        try:
            self._received(data)
        finally:
            self._receiving = False
        self._pump()
        self._flush()

    def _received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.TooManyStreamsError:
            return self._limit("streams", "more than {limit} concurrent streams", self.limits.max_streams,
                               h2.errors.ErrorCodes.REFUSED_STREAM)  # fmt: skip
        except h2.exceptions.DenialOfServiceError:
            return self._limit("header_list", "a header list over {limit} bytes", self.limits.max_header_list,
                               h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)  # fmt: skip
        except h2.exceptions.ProtocolError as e:
            if "continuation" in str(e).lower():
                return self._limit("continuation", "a header block in more than {limit} CONTINUATION frames", 64,
                                   h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)  # fmt: skip
            self.event("janustls.web.h2_protocol_error", "port {port}: HTTP/2 protocol error from {peer}: {why}",
                       why=str(e) or type(e).__name__)  # fmt: skip
            code = getattr(e, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR
            return self._goaway(code)
        for ev in events:
            if self.closing:
                return None
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                self._data(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                self._ended(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self._reset_by_client(ev)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.want_send(None)
            elif isinstance(ev, h2.events.PingReceived):
                if self._count("pings", self.limits.max_pings):
                    return None
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                if self._count("settings", self.limits.max_settings):
                    return None
                self.want_send(None)  # a new initial window may let queued output out
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closing = True
                self._flush()
                self.proto.close()
                return None
        return None

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802  # twisted's name
        self.closing = True
        for call in (self._idle, self._turn_call):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._turn_call = None
        streams, self.streams = list(self.streams.values()), {}
        self._sending.clear()
        for stream in streams:
            stream.lost(reason)

    # -- the producer the TLS layer pauses (the client's unsent output over the mark) ---------

    def pauseProducing(self) -> None:  # noqa: N802  # twisted's name
        self.out_paused = True

    def resumeProducing(self) -> None:  # noqa: N802  # twisted's name
        self.out_paused = False
        self.want_send(None)

    def stopProducing(self) -> None:  # noqa: N802  # twisted's name
        pass

    # -- streams ------------------------------------------------------------------------------

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        self._disarm_idle()
        request: JanusRequest = self.site.requestFactory(stream)
        stream.request = request
        method = path = authority = None
        raw: list[tuple[bytes, bytes]] = []
        length: int | None = None
        headers = request.requestHeaders
        for name, value in ev.headers or ():
            name, value = bytes(name), bytes(value)
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            raw.append((name, value))
        if authority is not None and not any(n == b"host" for n, _ in raw):
            raw.insert(0, (b"host", authority))
        cookies = [v for n, v in raw if n == b"cookie"]
        if len(cookies) > 1:  # browsers split cookies over fields: one field, as HTTP/1.1 (RFC 9113 8.2.3)
            at = next(i for i, (n, _) in enumerate(raw) if n == b"cookie")
            raw = [(n, v) for n, v in raw if n != b"cookie"]
            raw.insert(at, (b"cookie", b"; ".join(cookies)))
        for name, value in raw:
            headers.addRawHeader(name, value)
        request.raw_headers = raw
        request.method, request.uri, request.clientproto = method or b"GET", path or b"/", b"HTTP/2"
        request.parseCookies()
        if path is None:  # CONNECT (no :path): nothing here takes a tunnel over HTTP/2
            stream.answer(400, "CONNECT is not served over HTTP/2.")
            self.want_send(stream)
            return
        ended = ev.stream_ended is not None
        request.gotLength(0 if ended else length)
        if not ended and not stream.closed and self.limits.body_timeout:
            stream.timer = self.reactor.callLater(self.limits.body_timeout, self._body_timeout, stream)
        if ended:
            self._ended(sid)

    def _data(self, ev: h2.events.DataReceived) -> None:
        stream = self.streams.get(ev.stream_id)
        size = ev.flow_controlled_length or 0
        if size:
            try:
                self.conn.acknowledge_received_data(size, ev.stream_id)
            except h2.exceptions.StreamClosedError:
                pass
        if stream is None or stream.request is None or stream.closed or stream.done:
            return
        request = stream.request
        if not request.over_limit and ev.data:
            request.handleContentChunk(ev.data)

    def _ended(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.received:
            return
        stream.received = True
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = None
        request = stream.request
        if request is None or stream.closed or stream.done or request.over_limit:
            return
        self.proto.progress()  # idle_timeout: a whole request received
        request.requestReceived(request.method, request.uri, b"HTTP/2")

    def _reset_by_client(self, ev: h2.events.StreamReset) -> None:
        stream = self.streams.pop(ev.stream_id, None)
        self._sending.pop(ev.stream_id, None)
        if stream is not None:
            stream.lost(Failure(ConnectionLost(f"stream reset by the client (error {ev.error_code})")))
            self._after_stream()
        # Resets the client sends (rapid reset) and those h2 sends for frames the client got
        # wrong on a stream (provoked resets, "MadeYouReset") count alike.
        self._count("resets", self.limits.max_resets)

    def _body_timeout(self, stream: H2Stream) -> None:
        stream.timer = None
        if stream.received or stream.closed:
            return
        self.event("janustls.web.body_timeout", "port {port}: 408 on a stream of {peer}: no complete request {what} within {seconds}s",
                   what="body", seconds=self.limits.body_timeout)  # fmt: skip
        stream.answer(408, "The request body did not arrive in time.")

    def reset(self, stream: H2Stream, code: int) -> None:
        """Reset one stream (the others go on)."""
        if stream.closed or self.closing:
            stream.lost(Failure(ConnectionDone("stream reset")))
            return
        try:
            self.conn.reset_stream(stream.stream_id, error_code=code)
        except h2.exceptions.StreamClosedError:
            pass
        self.streams.pop(stream.stream_id, None)
        self._sending.pop(stream.stream_id, None)
        stream.lost(Failure(ConnectionDone("stream reset")))
        self._flush()
        self._after_stream()

    def _after_stream(self) -> None:
        if not self.streams:
            self._arm_idle()

    # -- sending ------------------------------------------------------------------------------

    def send_headers(self, stream: H2Stream, fields: list[tuple[bytes, bytes]]) -> None:
        """The response head: sent with the stream's next turn (with END_STREAM when the
        response is already complete and bodiless)."""
        if self.closing:
            return
        stream.fields = fields
        self.want_send(stream)

    def want_send(self, stream: H2Stream | None) -> None:
        """The stream has something to send: on the next turn (after the read being handled,
        else on the next reactor turn), so many streams' frames share TLS records."""
        if stream is not None:
            self._sending.setdefault(stream.stream_id, stream)
        if self._receiving or self._turn_call is not None or self.closing:
            return
        self._turn_call = self.reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        self._turn_call = None
        self._pump()
        self._flush()

    def _pump(self) -> None:
        """Send what the flow-control windows let out, stream by stream; END_STREAM when done."""
        if self.closing or self._pumping:
            return
        self._pumping = True
        conn = self.conn
        try:
            for sid, stream in list(self._sending.items()):
                if self.out_paused:
                    break
                if stream.closed:
                    self._sending.pop(sid, None)
                    continue
                try:
                    ended = False
                    if stream.fields is not None:
                        fields, stream.fields = stream.fields, None
                        ended = stream.done and not stream.out
                        conn.send_headers(sid, fields, end_stream=ended)
                    while stream.out and not self.out_paused:
                        window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                        if window <= 0:
                            break
                        chunk = stream.out[0]
                        if len(chunk) > window:
                            stream.out[0], chunk = chunk[window:], chunk[:window]
                        else:
                            stream.out.popleft()
                        stream.queued -= len(chunk)
                        ended = stream.done and not stream.out
                        conn.send_data(sid, chunk, end_stream=ended)
                    if not ended and stream.done and not stream.out:
                        if not stream.headers_sent:  # finished without a response head (should not happen): 500
                            stream.headers_sent = True
                            conn.send_headers(sid, [(b":status", b"500"), (b"content-length", b"0")])
                        conn.end_stream(sid)
                        ended = True
                    if ended:
                        stream.closed = True
                        self._sending.pop(sid, None)
                        self._finished(stream)
                    elif not stream.out:
                        self._sending.pop(sid, None)
                except h2.exceptions.StreamClosedError:
                    self._sending.pop(sid, None)
                    self.streams.pop(sid, None)
                    stream.lost(Failure(ConnectionDone("stream closed")))
                stream.sent_some()
        finally:
            self._pumping = False

    def _finished(self, stream: H2Stream) -> None:
        """The response went out whole: if the client is still sending, it need not."""
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = None
        if not stream.received:
            try:
                self.conn.reset_stream(stream.stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.StreamClosedError:
                pass
        self.streams.pop(stream.stream_id, None)
        self._after_stream()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- limits -------------------------------------------------------------------------------

    def _count(self, kind: str, limit: int) -> bool:
        """Count one frame of a flood kind; over its limit in the window: GOAWAY (True)."""
        now = self.reactor.seconds()
        if now - self._window_start >= FLOOD_WINDOW:
            self._window_start = now
            for k in self._counts:
                self._counts[k] = 0
        self._counts[kind] += 1
        if self._counts[kind] <= limit:
            return False
        what = {
            "resets": "{limit} stream resets",
            "pings": "{limit} PING frames",
            "settings": "{limit} SETTINGS frames",
        }
        self._limit(
            kind,
            what[kind] + f" within {FLOOD_WINDOW:g}s",
            limit,
            h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
            over="more than ",
        )
        return True

    def _limit(self, kind: str, what: str, limit: int, code: int, over: str = "") -> None:
        self.event("janustls.web.h2_limit", "port {port}: closing {peer}: " + over + what.replace("{limit}", str(limit)),
                   kind=kind, limit=limit)  # fmt: skip
        self._goaway(code)

    def _goaway(self, code: int) -> None:
        """GOAWAY with `code`, then close through the port protocol's close."""
        if self.closing:
            return
        try:
            self.conn.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass
        self._flush()
        self.closing = True
        self.proto.close()

    def _arm_idle(self) -> None:
        seconds = self.limits.keepalive_timeout
        if not seconds or self.closing or self._idle is not None:
            return
        self._idle = self.reactor.callLater(seconds, self._idle_timeout)

    def _disarm_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_timeout(self) -> None:
        self._idle = None
        if self.streams or self.closing:
            return
        self.event("janustls.web.keepalive_timeout", "port {port}: closing {peer}: no complete request {what} within {seconds}s",
                   what="started", seconds=self.limits.keepalive_timeout)  # fmt: skip
        self._goaway(h2.errors.ErrorCodes.NO_ERROR)
