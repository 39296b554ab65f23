"""The HTTP channel of a webserv port: twisted.web's, with the port's timeouts and size limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Site

from janustls.events import emit
from janustls.ports.base import address_text
from janustls.ports.web.request import JanusRequest, WebPortProtocol
from janustls.tls._twisted import received_header_size, request_line

__all__ = ['HttpLimits', 'JanusChannel', 'JanusSite']



@dataclass(frozen=True)
class HttpLimits:
    """A webserv port's HTTP limits (seconds; 0 = no limit for the timeouts)."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_header_bytes: int


_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large"}


class JanusChannel(http.HTTPChannel):
    """twisted.web's HTTP channel with a webserv port's timeouts and size limits.

    One deadline follows the request cycle: `keepalive_timeout` while waiting for a request
    (the first included), `header_timeout` from its first byte to the end of its headers,
    `body_timeout` for its body; none while the application answers.  Each limit answers
    (when no response is under way) and closes through the port protocol's close.

    Moving to the next phase only sets the deadline (no timer per phase): one timer per
    connection wakes at the deadline, or sooner, at most the shortest phase limit after it
    was armed, and re-arms until the deadline passes.  Since a phase's deadline is at least
    that far away when it is set, the timer never sleeps past one: each limit keeps its
    exact time.
    """

    site: JanusSite
    limits: HttpLimits
    _timer: IDelayedCall | None = None
    _phase = "idle"
    #: When the current phase's limit runs out (reactor seconds); None: no limit.
    _deadline: float | None = None
    #: The limit of each timed phase (seconds; 0 = none), and the shortest of them.
    _limits_of: dict[str, float] = {}
    _step = 0.0
    closing = False

    def connectionMade(self) -> None:
        super().connectionMade()
        limits = self.limits = self.site.limits
        self.MAX_LENGTH = self.totalHeadersSize = limits.max_header_bytes
        self._limits_of = {"idle": limits.keepalive_timeout, "header": limits.header_timeout, "body": limits.body_timeout}
        self._step = min((s for s in self._limits_of.values() if s), default=0.0)
        self._enter("idle")

    def _enter(self, phase: str) -> None:
        self._phase = phase
        seconds = self._limits_of.get(phase, 0)
        if not seconds or self.closing:
            self._deadline = None
            if self.closing and self._timer is not None:
                if self._timer.active():
                    self._timer.cancel()
                self._timer = None
            return
        clock = self.site.reactor
        self._deadline = clock.seconds() + seconds
        if self._timer is None:
            self._timer = clock.callLater(self._step, self._tick)

    def _tick(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closing:
            return  # armed again by the next timed phase
        clock = self.site.reactor
        left = deadline - clock.seconds()
        if left > 0:
            self._timer = clock.callLater(min(left, self._step), self._tick)
            return
        self._expired(self._phase, self._limits_of[self._phase])

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        event = {"idle": "janustls.web.keepalive_timeout", "header": "janustls.web.header_timeout", "body": "janustls.web.body_timeout"}[phase]
        self._event(event, "port {port}: closing {peer}: no complete request {what} within {seconds}s",
                    what={"idle": "started", "header": "header section", "body": "body"}[phase], seconds=seconds)  # fmt: skip
        self.refuse(408 if phase != "idle" else None)

    def _event(self, event: str, text: str, **fields: Any) -> None:
        proto = self._janus_protocol()
        if proto is not None:
            emit(event, text, port=proto.factory.runtime.port.name, peer=address_text(proto.peer_address()), **fields)

    def _janus_protocol(self) -> WebPortProtocol | None:
        return getattr(self.transport, "wrappedProtocol", None)

    # -- the request cycle ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self._phase == "idle" and data:
            self._enter("header")
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.closing:
            return
        if self._phase == "idle":  # a pipelined request, read with the one before
            self._enter("header")
        super().lineReceived(line)  # over totalHeadersSize: _respondToBadRequestAndDisconnect, answered 431

    def lineLengthExceeded(self, line: bytes) -> None:
        self._event("janustls.web.headers_too_large", "port {port}: a header line of {peer} over {limit} bytes", limit=self.MAX_LENGTH)
        self.refuse(431)

    def allHeadersReceived(self) -> None:
        if self.length != 0:
            self._enter("body")
        else:  # busy: no limit while the application answers (what _enter("busy") does, inline)
            self._phase = "busy"
            self._deadline = None
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._phase != "busy":  # a body just ended (without one, allHeadersReceived entered busy)
            self._enter("busy")
        proto = self._janus_protocol()
        if proto is not None:
            proto.progress()  # idle_timeout: a whole request received (requestReceived is next)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent and not self.closing:
            self._enter("idle")  # a pipelined request read next moves on to "header"
        super().requestDone(request)
        if self.persistent and not self.closing and getattr(self.transport, "output_full", False):
            self.paused = True  # LineReceiver: no further line is parsed until resumed

    # -- back-pressure: no next pipelined request while the client's output is over the mark --
    # The channel answers the requests of one read in a loop; a client that pipelines small
    # requests for large responses without reading them would otherwise turn each read into
    # megabytes of output.  Parsing stops between requests instead (reading from the client is
    # paused meanwhile, so what waits stays within one read) until the output drains.

    def _output_full(self) -> bool:
        return bool(getattr(self.transport, "output_full", False))

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self.paused and not self._output_full() and not self.closing:
            self.paused = False
            self.dataReceived(b"")  # the requests already read, in order

    def _respondToBadRequestAndDisconnect(self) -> None:
        if received_header_size(self) > self.totalHeadersSize:  # what Twisted's lineReceived checks first
            self._event("janustls.web.headers_too_large", "port {port}: header section of {peer} over {limit} bytes", limit=self.totalHeadersSize)
            self.refuse(431)
            return
        self._event("janustls.web.bad_request", "port {port}: unreadable request from {peer}: 400")
        self.refuse(400)

    def refuse_body(self, request: JanusRequest, limit: int) -> None:
        self._event("janustls.web.body_too_large", "port {port}: body of {peer} on {path} over {limit} bytes: 413",
                    path=(request_line(self)[1] or b"").decode("latin-1"), limit=limit)  # fmt: skip
        self.refuse(413, f"A request on this path may carry at most {limit} bytes.")

    def refuse(self, status: int | None, message: str = "") -> None:
        """Answer `status` (unless a response is under way) and close the connection."""
        if self.closing:
            return
        answering = any(getattr(r, "startedWriting", False) for r in self.requests) or len(self.requests) > 1
        if status is not None and not answering:
            title = _REASONS[status]
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
        else:
            super().loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.closing = True
        self._enter("closed")
        super().connectionLost(reason)


class JanusSite(Site):
    """No per-request access log line (the events and the status listener count requests)."""

    noisy = False
    requestFactory = JanusRequest
    protocol = JanusChannel
    limits: HttpLimits

    def log(self, request: Any) -> None:
        pass

