"""webserv ports: HTTP/1.1 (twisted.web) over the port's TLS, dispatched by the rule table.

The port protocol (`WebProtocol`, a PortProtocol) owns one twisted.web HTTP channel
per connection and feeds it the decrypted bytes; the channel's requests are
`JanusRequest`s, which answer the connection object's certificate calls by delegating
to it.  Everything that can be decided once per connection is decided once and kept
on the protocol (the mod_ssl environ, the port's `allow` verdict, the connection-wide
exception); the rule match is cached per (method, path) by `janustls.rules`.

Certificate problems become responses the operator chose (exception rules):
SSLNOCERTERR, SSLCERTERR (with the typed reason), FORBIDDEN (identity rules), and
SSLPROTOCOLERR as a log hook for handshakes that fail on protocol grounds.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import html
import inspect
import json
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.wsgi import WSGIResource, _WSGIResponse

from janustls.certinfo import CertChain
from janustls.config import ClientCertMode
from janustls.connection import Connection
from janustls.errors import CertificateRequestTimeout, ConfigError, ConfigErrors
from janustls.events import emit
from janustls.forwarding import identity_headers, is_identity_header, parse_backend
from janustls.identity import Policy, Subject, Verdict
from janustls.ports.access import build_policy, decide, log_refusal, peer_ip, resolver_for
from janustls.ports.base import PortFactory, PortProtocol, PortRuntime, _address_text
from janustls.reasons import Reason, Refusal
from janustls.rules import Action, Exc, Kind, Resolution, Rule, RuleTable, build_table
from janustls.tls import refusal_for_failure, refused_leaf
from janustls.webpath import PathError, encode, normal_form

if TYPE_CHECKING:
    from janustls.config import WebRuleLine

__all__ = ["WebFactory", "WebProtocol", "JanusRequest", "ssl_environ", "apache_time", "ProtocolError"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MESSAGES = {
    Exc.SSLNOCERTERR: "This page needs a client certificate, and none was presented.",
    Exc.SSLCERTERR: "The client certificate was refused.",
    Exc.FORBIDDEN: "The client certificate does not give access to this page.",
}


# -- Apache mod_ssl's variables ---------------------------------------------------------------


def apache_time(t: datetime.datetime) -> str:
    """OpenSSL's ASN1_TIME_print format, as Apache sets SSL_CLIENT_V_START: `Jan  5 09:03:07 2026 GMT`."""
    t = t.astimezone(datetime.timezone.utc)
    return f"{_MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S} {t.year} GMT"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def ssl_environ(
    chain: CertChain,
    *,
    refusal: Refusal | None,
    tls_version: str,
    cipher: str,
) -> dict[str, str]:
    """Apache mod_ssl's SSL_* variables for a connection (plus SSL_CLIENT_SAN_URI_n / _IP_n)."""
    env = {"HTTPS": "on", "SSL_PROTOCOL": tls_version, "SSL_CIPHER": cipher, "SSL_VERSION_LIBRARY": SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()}
    leaf = chain.certificate(0)
    if leaf is None:
        env["SSL_CLIENT_VERIFY"] = f"FAILED:{refusal.reason.value}" if refusal is not None else "NONE"
        return env
    env["SSL_CLIENT_VERIFY"] = "SUCCESS"
    env["SSL_CLIENT_S_DN"] = leaf.subject.rfc4514_string()
    env["SSL_CLIENT_I_DN"] = leaf.issuer.rfc4514_string()
    for suffix, item in (("CN", "CN"), ("O", "O"), ("OU", "OU"), ("C", "C"), ("L", "L"), ("ST", "ST"), ("Email", "EMAIL")):
        values = chain.values(item) if item != "EMAIL" else [
            str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)
        ]
        for i, v in enumerate(values):
            env[f"SSL_CLIENT_S_DN_{suffix}" + (f"_{i}" if i else "")] = v
    for attr in leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[:1]:
        env["SSL_CLIENT_I_DN_CN"] = str(attr.value)
    serial = format(leaf.serial_number, "X")
    env["SSL_CLIENT_M_SERIAL"] = serial if len(serial) % 2 == 0 else "0" + serial
    env["SSL_CLIENT_M_VERSION"] = str(leaf.version.value + 1)
    env["SSL_CLIENT_V_START"] = apache_time(leaf.not_valid_before_utc)
    env["SSL_CLIENT_V_END"] = apache_time(leaf.not_valid_after_utc)
    remain = leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    env["SSL_CLIENT_V_REMAIN"] = str(max(0, remain.days))
    env["SSL_CLIENT_CERT"] = _pem(leaf)
    for i, cert in enumerate(chain.certificates[1:]):
        env[f"SSL_CLIENT_CERT_CHAIN_{i}"] = _pem(cert)
    for suffix, item in (("DNS", "SAN_DNS"), ("Email", "SAN_EMAIL"), ("URI", "SAN_URI"), ("IP", "SAN_IP")):
        for i, v in enumerate(chain.values(item)):
            env[f"SSL_CLIENT_SAN_{suffix}_{i}"] = v
    return env


# -- the request ----------------------------------------------------------------------------------


class JanusRequest(Request):
    """A twisted.web request that also answers the connection's certificate calls."""

    #: Set when an exception handler runs: which exception, and why.
    exception: Exc | None = None
    refusal: Refusal | None = None
    #: The wildcard parts of the rule that matched (`ON /app/*` on /app/x/y: ("x/y",)).
    rule_parts: tuple[str, ...] = ()
    rule: Rule | None = None
    _body_size = 0
    _hold_limit: int | None = None
    _body_limit: int | None = None
    over_limit = False
    gone = False
    #: The request path in its normal form (janustls.webpath), set when the request is served.
    normal_path: str | None = None

    # The connection object (its PortProtocol is the TLS transport's wrapped protocol).
    @property
    def janus_protocol(self) -> WebProtocol:
        return self.channel.transport.wrappedProtocol  # type: ignore[no-any-return,union-attr]

    @property
    def connection(self) -> Connection:
        conn = self.janus_protocol.connection
        assert conn is not None
        return conn

    def cert_levels(self) -> int:
        return self.connection.cert_levels()

    def cert_info(self, item: str, level: int = 0) -> str | None:
        return self.connection.cert_info(item, level)

    def cert_values(self, item: str, level: int = 0) -> list[str]:
        return self.connection.cert_values(item, level)

    def certificate(self, level: int = 0) -> x509.Certificate | None:
        return self.connection.certificate(level)

    @property
    def verified_chain(self) -> tuple[x509.Certificate, ...]:
        return self.connection.verified_chain

    def request_certificate(self, require: bool = False) -> defer.Deferred[x509.Certificate | None]:
        return self.connection.request_certificate(require)

    def can_request_certificate(self) -> tuple[bool, str]:
        return self.connection.can_request_certificate()

    @property
    def tls_version(self) -> str:
        return self.connection.tls_version

    @property
    def cipher(self) -> str:
        return self.connection.cipher

    @property
    def peer(self) -> Any:
        return self.connection.peer

    @property
    def port_name(self) -> str:
        return self.connection.port_name

    def ssl_environ(self) -> dict[str, str]:
        """Apache mod_ssl's variables for this connection (computed once per connection)."""
        return self.janus_protocol.ssl_environ()

    def wants_json(self) -> bool:
        """Whether the Accept header prefers JSON to HTML."""
        return wants_json(self.getHeader("accept"))

    # Every body is bounded by its rule's max_body (the port's by default): a declared
    # length over it is refused before any byte is stored, a chunked one when it passes it.
    def gotLength(self, length: int | None) -> None:
        proto = self.janus_protocol
        command, path = getattr(self.channel, "_command", None), getattr(self.channel, "_path", None)
        if isinstance(command, bytes) and isinstance(path, bytes):
            limit, self._hold_limit = proto.factory.limits_for(command, path)
        else:
            limit = proto.factory.runtime.port.max_body
        self._body_limit = limit
        if length is not None and length > limit:
            self.over_limit = True
            self.content = io.BytesIO()
            self.channel.refuse_body(self, limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.over_limit:
            return
        self._body_size += len(data)
        if self._body_limit is not None and self._body_size > self._body_limit:
            self.over_limit = True
            self.channel.refuse_body(self, self._body_limit)
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True
        super().connectionLost(reason)

    # idle_timeout counts whole requests (and answers), not bytes: see WebProtocol.
    # (A request received counts in JanusChannel.allContentReceived, just before requestReceived;
    # `progress` only counts when the port has an idle_timeout: checked first, saving a call.)
    def finish(self) -> None:
        if not self.finished and not self.gone:
            proto = self.janus_protocol
            if proto._idle_timer is not None:
                proto.progress()
        super().finish()


def wants_json(accept: bytes | str | None) -> bool:
    if not accept:
        return False
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    best_json = best_html = -1.0
    for part in text.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "application/json" or media.endswith("+json"):
            best_json = max(best_json, q)
        elif media in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
    return best_json > 0 and best_json > best_html


# -- static pages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Page:
    body: bytes
    etag: bytes
    last_modified: bytes
    mtime: float
    content_type: str
    stamp: tuple[int, int]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class PageCache:
    """Files of the procedure library, read once and re-read when they change (stat per request).

    Never served: a file outside the directory a rule names (symlinks resolved), a file
    janustls reads as key material or the port-definition file (`protected`), a dotfile,
    and a file holding a PEM private key.
    """

    def __init__(self, procs: Path, protected: Sequence[Path] = ()) -> None:
        self.root = Path(os.path.realpath(procs))
        self.protected = frozenset(os.path.realpath(self.root / p) for p in protected)
        self._pages: dict[str, _Page] = {}
        self._paths: dict[tuple[str, str], str | None] = {}

    def _resolve(self, relative: str, within: str) -> str | None:
        key = (relative, within)
        path = self._paths.get(key, "")
        if path == "":
            root = os.path.realpath(self.root / within)
            real = os.path.realpath(self.root / relative)
            path = None  # None: refused
            if _inside(root, str(self.root)) and _inside(real, root) and real not in self.protected:
                rest = os.path.relpath(real, root).split(os.sep)
                if not any(part.startswith(".") and part != "." for part in rest):
                    path = real
            if len(self._paths) > 4096:
                self._paths.clear()
            self._paths[key] = path
        return path

    def refused(self, relative: str, within: str = "") -> bool:
        """Whether a page exists but is one janustls never serves."""
        path = self._resolve(relative, within)
        if path is None:
            return os.path.exists(self.root / relative)
        try:
            with open(path, "rb") as f:
                return b"PRIVATE KEY-----" in f.read(1 << 20)
        except OSError:
            return False

    def get(self, relative: str, within: str = "") -> _Page | None:
        """The page at `relative` (to the procedure library), confined to the directory `within`."""
        path = self._resolve(relative, within)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not os.path.isfile(path):
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        page = self._pages.get(path)
        if page is not None and page.stamp == stamp:
            return page
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return None
        if b"PRIVATE KEY-----" in body:
            return None
        ctype, encoding = mimetypes.guess_type(path)
        ctype = ctype or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        page = _Page(body, etag, http.datetimeToString(int(st.st_mtime)), int(st.st_mtime), ctype, stamp)
        if len(self._pages) > 1024:
            self._pages.clear()
        self._pages[path] = page
        return page


def page_exposures(factory: WebFactory, files: Sequence[Path]) -> list[tuple[Rule, Path]]:
    """(rule, file) pairs where a page rule's directory holds a file janustls reads as key material.

    Such files are never served, but a served directory is the wrong home for them
    (`janustls check` warns).
    """
    found: list[tuple[Rule, Path]] = []
    rules = [*factory.table.rules, *factory.table.exceptions.values()]
    for rule in rules:
        if rule.action is not Action.PAGE:
            continue
        root = os.path.realpath(factory.pages.root / (rule.page_root if "*" in rule.target else rule.target))
        for f in files:
            real = os.path.realpath(factory.pages.root / f)
            if _inside(real, root):
                found.append((rule, Path(real)))
    return found


# -- WSGI with mod_ssl's variables ----------------------------------------------------------------


class JanusWSGIResource(WSGIResource):
    """twisted.web's WSGI container, with Apache mod_ssl's SSL_* variables in the environ."""

    def render(self, request: JanusRequest) -> int:  # type: ignore[override]
        strip_identity_headers(request)
        response = _WSGIResponse(self._reactor, self._threadpool, self._application, request)
        response.environ.update(request.ssl_environ())
        # PEP 3333: SCRIPT_NAME and PATH_INFO decoded, as the bytes of the normal path read as latin-1.
        for key, value in getattr(request, "wsgi_paths", {}).items():
            response.environ[key] = value.encode("utf-8").decode("latin-1")
        response.start()
        return NOT_DONE_YET  # type: ignore[no-any-return]


def strip_identity_headers(request: Request) -> None:
    """Remove every request header that reads as one janustls sets (any case, `_` or `-`)."""
    headers = request.requestHeaders
    for name in [n for n, _ in headers.getAllRawHeaders() if is_identity_header(n)]:
        headers.removeHeader(name)


# -- HTTP limits ---------------------------------------------------------------------------------------


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

    site: _Site
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
            emit(event, text, port=proto.factory.runtime.port.name, peer=_address_text(proto.peer_address()), **fields)

    def _janus_protocol(self) -> WebProtocol | None:
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
        if proto is not None and proto._idle_timer is not None:
            proto.progress()  # a whole request received (Twisted calls requestReceived next)
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
        if self._receivedHeaderSize > self.totalHeadersSize:  # what Twisted's lineReceived checks first
            self._event("janustls.web.headers_too_large", "port {port}: header section of {peer} over {limit} bytes", limit=self.totalHeadersSize)
            self.refuse(431)
            return
        self._event("janustls.web.bad_request", "port {port}: unreadable request from {peer}: 400")
        self.refuse(400)

    def refuse_body(self, request: JanusRequest, limit: int) -> None:
        self._event("janustls.web.body_too_large", "port {port}: body of {peer} on {path} over {limit} bytes: 413",
                    path=(getattr(self, "_path", b"") or b"").decode("latin-1"), limit=limit)  # fmt: skip
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


# -- SSLPROTOCOLERR -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolError:
    """What an SSLPROTOCOLERR hook receives: a handshake that failed on protocol grounds."""

    port: str
    peer: str
    detail: str


# -- the dispatcher -----------------------------------------------------------------------------------


class _Dispatch(Resource):
    isLeaf = True

    def __init__(self, factory: WebFactory) -> None:
        super().__init__()
        self.factory = factory

    def render(self, request: JanusRequest) -> Any:  # type: ignore[override]
        return self.factory.serve(request)


class _Site(Site):
    """No per-request access log line (the events and the status listener count requests)."""

    noisy = False
    requestFactory = JanusRequest
    protocol = JanusChannel
    limits: HttpLimits

    def log(self, request: Any) -> None:
        pass


class WebProtocol(PortProtocol):
    """One TLS connection of a webserv port, carrying an HTTP/1.1 channel."""

    factory: WebFactory
    channel: Any = None
    _env: tuple[Any, dict[str, str]] | None = None
    _gate: tuple[Any, tuple[Exc, Refusal, str] | None] | None = None
    _port_verdict: Any = None
    #: Set first thing when the connection is lost, before a pending certificate request
    #: answers (Chromium drops the connection when asked, then retries on a new one).
    lost = False
    #: idle_timeout counts from the last whole request received or answered (and output
    #: the client took): a client trickling a request byte by byte gains nothing.
    bytes_are_progress = False

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        super().connectionLost(reason)

    def close(self) -> None:
        """Close even while twisted.web's channel is registered as the transport's producer."""
        if getattr(self.transport, "_producer", None) is not None:
            self.transport.unregisterProducer()
        super().close()

    def connection_ready(self, connection: Connection) -> None:
        self.channel = self.factory.site.buildProtocol(self.peer_address())
        self.channel.makeConnection(self.transport)

    def bytes_received(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.dataReceived(data)

    def connection_ended(self, reason: Failure | None) -> None:
        if self.channel is not None:
            channel, self.channel = self.channel, None
            channel.connectionLost(reason)
        elif self.connection is None and not self._outcome_logged:
            self.factory.protocol_error(self, reason)

    def ssl_environ(self) -> dict[str, str]:
        conn = self.connection
        assert conn is not None
        leaf = conn.certificate()
        if self._env is None or self._env[0] is not leaf:
            self._env = (
                leaf,
                ssl_environ(
                    conn.cert_chain,
                    refusal=self.transport.refusal,
                    tls_version=conn.tls_version,
                    cipher=conn.cipher,
                ),
            )
        return self._env[1]

    def gate(self) -> tuple[Exc, Refusal, str] | None:
        """The exception every request of this connection gets, if any (once per certificate)."""
        conn = self.connection
        assert conn is not None
        leaf = conn.certificate()
        if self._gate is not None and self._gate[0] is leaf:
            return self._gate[1]
        found: tuple[Exc, Refusal, str] | None = None
        tls = self.factory.runtime.tls
        refusal = self.transport.refusal
        port = self.factory.runtime.port
        if leaf is None and refusal is not None and tls.tolerate_refused:
            found = (Exc.SSLCERTERR, refusal, f"[{port.section}] client_cert")
        elif leaf is None and tls.tolerate_missing:
            found = (Exc.SSLNOCERTERR, Refusal(Reason.NO_CERTIFICATE, None, None, Reason.NO_CERTIFICATE.description), f"[{port.section}] client_cert = require")
        if found is not None:
            self.factory.runtime.refused += 1
            log_refusal(port.name, _address_text(conn.peer), found[1], found[2], refused_leaf(self.transport))
        self._gate = (leaf, found)
        return found


class WebFactory(PortFactory):
    """A webserv port: its rule table, site, pages, WSGI thread pool and exception handling."""

    protocol = WebProtocol

    def __init__(self, runtime: PortRuntime, procs: Path, lines: Sequence[WebRuleLine], *, protected: Sequence[Path] = ()) -> None:
        super().__init__(runtime)
        port = runtime.port
        self.procs = procs
        resolve = resolver_for(procs, resources=True)
        kind, _, name = port.section.partition(":")
        section = f"web:{name.strip() or port.name}" if kind.strip().lower() == "port" else f"web:{port.name}"
        errors: list[ConfigError] = []  # the table's and the port's `allow` mistakes, reported together
        try:
            self.table: RuleTable = build_table(lines, source=port.source, section=section, resolve=resolve)
        except ConfigErrors as e:
            errors.extend(e.errors)
        try:
            self.policy: Policy | None = build_policy(port, procs)
        except ConfigErrors as e:
            errors.extend(e.errors)
        if errors:
            raise ConfigErrors(errors)
        self.pages = PageCache(procs, (*protected, Path(port.source), port.certificate, port.private_key, *port.addca, *port.crl))
        self.reactor = runtime.reactor
        # WSGI applications run in the reactor's thread pool: it lives as long as the process,
        # so connections that outlive a reload (PortTLSFactory.adopt) keep a running pool.
        self._wsgi: dict[int, JanusWSGIResource] = {}
        for rule in self.table.rules:
            if rule.action is Action.WSGI:
                if not callable(rule.handler):
                    raise ConfigErrors([ConfigError(port.source, section, rule.key, f"wsgi {rule.target} is not a WSGI application")])
                self._wsgi[rule.index] = JanusWSGIResource(self.reactor, None, rule.handler)
        problems = []
        for rule in self.table.exceptions.values():
            if rule.action is Action.PAGE and self.pages.get(rule.target) is None:
                problems.append(ConfigError(port.source, section, rule.key, f"page {rule.target} is not a readable file in the procedure library ({procs})"))
        for rule in self.table.rules:
            if rule.action is Action.PAGE and "*" not in rule.target and self.pages.get(rule.target) is None:
                problems.append(ConfigError(port.source, section, rule.key, f"page {rule.target} is not a readable file in the procedure library ({procs})"))
            if rule.client_cert and port.client_cert is ClientCertMode.NONE and not port.addca:
                problems.append(ConfigError(port.source, section, rule.key, "asks for a client certificate, but no CA is added for the port (addca =)"))
        if problems:
            raise ConfigErrors(problems)
        # Exception rules decide what the TLS layer leaves to the web layer.
        missing = port.client_cert is ClientCertMode.REQUIRE and Exc.SSLNOCERTERR in self.table.exceptions
        refused = Exc.SSLCERTERR in self.table.exceptions and (
            port.client_cert is not ClientCertMode.NONE or self.table.uses_client_cert
        )
        if missing or refused:
            runtime.tls.tolerate(missing, refused)
        self.site = _Site(_Dispatch(self), timeout=None)
        self.site.reactor = self.reactor
        self._limits_seen: dict[tuple[bytes, bytes], tuple[int, int | None]] = {}
        self.site.limits = HttpLimits(port.header_timeout, port.body_timeout, port.keepalive_timeout, port.max_header_bytes)

    # -- lifecycle ----------------------------------------------------------------------------------

    def doStart(self) -> None:
        super().doStart()
        self.site.doStart()
        for resource in self._wsgi.values():
            if resource._threadpool is None:
                resource._threadpool = self.reactor.getThreadPool()

    def doStop(self) -> None:
        super().doStop()
        self.site.doStop()

    def _resolve_raw(self, method: bytes, path: bytes) -> Resolution | None:
        try:
            normal = normal_form(path.split(b"?", 1)[0])[0]
        except PathError:
            return None  # answered 400 once the request is served
        return self.table.resolve(method.decode("latin-1"), normal)

    def limits_for(self, method: bytes, path: bytes) -> tuple[int, int | None]:
        """(`body_limit`, `hold_limit` when the table asks for certificates, else None), remembered.

        Asked for every request before its body is read; keep-alive clients repeat their
        request lines, so the answers are kept per (method, request target), a bounded number.
        """
        key = (method, path)
        found = self._limits_seen.get(key)
        if found is None:
            found = (self.body_limit(method, path), self.hold_limit(method, path) if self.table.uses_client_cert else None)
            if len(path) <= 512:
                if len(self._limits_seen) >= 4096:
                    self._limits_seen.clear()
                self._limits_seen[key] = found
        return found

    def hold_limit(self, method: bytes, path: bytes) -> int | None:
        """The body bound for a request whose rule asks for a certificate mid-connection."""
        res = self._resolve_raw(method, path)
        if res is not None and res.action is not None and res.action.client_cert:
            return res.action.body_limit(self.runtime.port.max_body)
        return None

    def body_limit(self, method: bytes, path: bytes) -> int:
        """The largest body a request may carry: its rule's max_body, else the port's."""
        res = self._resolve_raw(method, path)
        if res is not None and res.action is not None:
            return res.action.body_limit(self.runtime.port.max_body)
        return self.runtime.port.max_body

    # -- serving --------------------------------------------------------------------------------------

    def serve(self, request: JanusRequest) -> Any:
        """Render one request: the fast path when nothing needs waiting for, else a coroutine."""
        proto = request.janus_protocol
        if request.normal_path is None:
            try:
                # handlers see the normal form too (written back as a URL path)
                request.normal_path, request.path = normal_form(request.path)
            except PathError as e:
                self._status(request, 400, "Bad Request", f"This request path is refused: {e}.", event="janustls.web.bad_path")
                return NOT_DONE_YET
        gate = proto.gate()
        res = self.table.resolve(request.method.decode("latin-1"), request.normal_path)
        rule = res.action
        verdict = proto._port_verdict
        if (
            gate is None
            and (self.policy is None or (verdict is not None and verdict[1].allowed and verdict[0] is proto.connection.certificate()))  # type: ignore[union-attr]
            and rule is not None
            and res.access is None
            and rule.allow is None
            and rule.client_cert is None
            and rule.action is Action.CALL
            and not request.over_limit
        ):
            request.rule, request.rule_parts = rule, res.parts
            return self._call(request, rule, res)
        defer.ensureDeferred(self._serve(request, gate, res)).addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _serve(self, request: JanusRequest, gate: tuple[Exc, Refusal, str] | None, res: Resolution) -> None:
        proto = request.janus_protocol
        conn = proto.connection
        assert conn is not None
        if gate is not None:
            return self._exception(request, *gate)
        rule = res.action
        if rule is not None and rule.client_cert is not None:
            # Ask first: identity rules then judge the certificate the client sends.
            request.rule, request.rule_parts = rule, res.parts
            if request.over_limit:
                return self._status(request, 413, "Content Too Large", f"A request on this path may carry at most {rule.body_limit(self.runtime.port.max_body)} bytes.", event="janustls.web.body_too_large")
            done = await self._ask(request, rule)
            if done:
                return None
        if self.policy is not None:
            verdict = proto._port_verdict
            if verdict is None or verdict[0] is not conn.certificate():
                v = await decide(self.policy, self._subject(request), self.reactor)
                verdict = proto._port_verdict = (conn.certificate(), v)
            if not verdict[1].allowed:
                return self._forbidden(request, verdict[1])
        if rule is None:
            return self._status(request, 404, "Not Found", "Nothing is served at this URL.")
        request.rule, request.rule_parts = rule, res.parts
        if res.access is not None:
            access = res.access
            assert access.allow is not None
            if access.kind is Kind.ALLOW:
                v = await decide(access.allow, self._subject(request), self.reactor)
                if not v.allowed:
                    return self._forbidden(request, v)
            else:
                v = await decide(access.allow, self._subject(request), self.reactor)
                if v.allowed:  # the DISALLOW expression matched this client
                    refused = Verdict(False, access.allow.rule, Reason.NOT_ALLOWED)
                    return self._forbidden(request, refused)
        if rule.allow is not None:
            v = await decide(rule.allow, self._subject(request), self.reactor)
            if not v.allowed:
                return self._forbidden(request, v)
        result = self._run(request, rule, res)
        if result is NOT_DONE_YET:
            return None
        self._finish(request, result)
        return None

    async def _ask(self, request: JanusRequest, rule: Rule) -> bool:
        """Per-path certificate: ask mid-connection if needed; True when a response was already given."""
        conn = request.connection
        if conn.cert_levels():
            return False
        handler = self.table.exception(Exc.SSLNOCERTERR)
        require = rule.client_cert == "require"
        can, why = conn.can_request_certificate()
        if not can:
            if not require:
                return False
            if rule.fallback:
                emit("janustls.web.fallback", "port {port}: {peer} cannot be asked for a certificate ({why}); redirected to {url}",
                     port=self.runtime.port.name, peer=_address_text(conn.peer), why=why, url=rule.fallback, path=request.path.decode("latin-1"))  # fmt: skip
                self._redirect(request, rule.substitute([encode(p) for p in request.rule_parts], rule.fallback), 302)
                return True
            self._exception(request, Exc.SSLNOCERTERR, Refusal(Reason.NO_CERTIFICATE, None, None, why), rule.describe(self.table.section))
            return True
        strict = require and handler is None  # no certificate: the TLS layer refuses and closes
        try:
            await conn.request_certificate(strict)
        except CertificateRequestTimeout as e:
            self._exception(request, Exc.SSLNOCERTERR, Refusal(Reason.NO_CERTIFICATE, None, None, str(e)), rule.describe(self.table.section))
            return True
        proto = request.janus_protocol
        if request.gone or proto.lost:
            return True  # nobody to answer: dropped quietly
        if conn.cert_levels():
            return False
        refusal = proto.transport.refusal
        if refusal is not None and self.table.exception(Exc.SSLCERTERR) is not None:
            self._exception(request, Exc.SSLCERTERR, refusal, rule.describe(self.table.section))
            return True
        if strict:  # refused at the TLS layer (janustls.request.refused), closed if still open
            proto.close()
            return True
        if not require:
            return False
        self._exception(request, Exc.SSLNOCERTERR, Refusal(Reason.NO_CERTIFICATE, None, None, Reason.NO_CERTIFICATE.description), rule.describe(self.table.section))
        return True

    def _subject(self, request: JanusRequest) -> Subject:
        conn = request.connection
        return Subject(conn.verified_chain, peer_ip(conn.peer), None, request)

    # -- actions --------------------------------------------------------------------------------------

    def _run(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any:
        if rule.action is Action.CALL:
            return self._call(request, rule, res)
        if rule.action is Action.REDIRECT:
            self._redirect(request, rule.substitute([encode(p) for p in res.parts]), rule.status or 302)
            return NOT_DONE_YET
        if rule.action is Action.PAGE:
            within = rule.page_root if res.parts else rule.target
            return self._page(request, rule.substitute(res.parts), res.content_type, rule.status, conditional=True, within=within)
        if rule.action is Action.WSGI:
            self._mount(request, rule)
            return self._wsgi[rule.index].render(request)
        if rule.action is Action.FORWARD:
            return self._forward(request, rule.substitute([encode(p) for p in res.parts]))
        raise AssertionError(rule.action)

    def _forward(self, request: JanusRequest, url: str) -> Any:
        """Send the request on to an HTTP backend with the client's identity as headers.

        Headers the client sent that read as ones janustls sets are dropped first: only
        janustls can set them.  The body (de-chunked and bounded by max_body) goes on with
        a Content-Length and nothing else framing it, so the backend reads exactly one request.
        """
        backend = parse_backend(url)
        headers = request.requestHeaders
        strip_identity_headers(request)
        for name in (b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade", b"proxy-connection", b"keep-alive"):
            headers.removeHeader(name)
        content = request.content
        size = 0
        if content is not None:
            content.seek(0, os.SEEK_END)
            size = content.tell()
            content.seek(0)
        if size or request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"):
            headers.setRawHeaders(b"content-length", [b"%d" % size])
        conn = request.connection
        chain = conn.cert_chain
        for name, value in identity_headers(chain, request.janus_protocol.transport.refusal).items():
            headers.setRawHeaders(name.encode("ascii"), [value.encode("utf-8")])
        peer = getattr(conn.peer, "host", None)
        if peer is not None:
            headers.setRawHeaders(b"x-forwarded-for", [peer.encode("ascii")])
        headers.setRawHeaders(b"x-forwarded-proto", [b"https"])
        path, _, query = backend.path.partition("?")
        if not query and b"?" in request.uri:
            query = request.uri.split(b"?", 1)[1].decode("latin-1")
        resource = ReverseProxyResource(backend.host, backend.port, path.encode("latin-1"), reactor=self.reactor)
        request.uri = (path + ("?" + query if query else "")).encode("latin-1")
        return resource.render(request)

    def _mount(self, request: JanusRequest, rule: Rule) -> None:
        """prepath = the rule's literal prefix, postpath = the rest (SCRIPT_NAME / PATH_INFO), from the normal path."""
        prefix = rule.prefix.rstrip("/")
        path = request.normal_path if request.normal_path is not None else request.path.decode("latin-1")
        rest = path[len(prefix):] if path.startswith(prefix) else path
        request.wsgi_paths = {"SCRIPT_NAME": prefix if path.startswith(prefix) else "", "PATH_INFO": rest}  # type: ignore[attr-defined]
        request.prepath = [s.encode("utf-8") for s in prefix.split("/") if s]
        tail = rest.encode("utf-8")
        request.postpath = tail.split(b"/")[1:] if tail.startswith(b"/") else ([tail] if tail else [])

    def _call(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any:
        handler = rule.handler
        try:
            if IResource.providedBy(handler):
                self._mount(request, rule)
                return getChildForRequest(handler, request).render(request)
            result = handler(request)
        except Exception:
            self._handler_error(request, rule, Failure())
            return NOT_DONE_YET
        if isinstance(result, str):
            if request.responseHeaders.getRawHeaders(b"content-type") is None:
                request.setHeader(b"content-type", (res.content_type or "text/html; charset=utf-8").encode())
            return result.encode("utf-8")
        if isinstance(result, bytes):
            if res.content_type and request.responseHeaders.getRawHeaders(b"content-type") is None:
                request.setHeader(b"content-type", res.content_type.encode())
            return result
        if inspect.isawaitable(result) and not isinstance(result, defer.Deferred):
            result = defer.ensureDeferred(result)  # type: ignore[arg-type]
        if isinstance(result, defer.Deferred):
            result.addCallbacks(lambda value: self._finish(request, self._coerce(request, value, res)),
                                lambda f: self._handler_error(request, rule, f))  # fmt: skip
            return NOT_DONE_YET
        return self._coerce(request, result, res)

    def _coerce(self, request: JanusRequest, value: Any, res: Resolution) -> Any:
        if value is NOT_DONE_YET:
            return NOT_DONE_YET
        if isinstance(value, str):
            if request.responseHeaders.getRawHeaders(b"content-type") is None:
                request.setHeader(b"content-type", (res.content_type or "text/html; charset=utf-8").encode())
            return value.encode("utf-8")
        if isinstance(value, (dict, list)):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(value).encode()
        if IResource.providedBy(value):
            return value.render(request)
        if value is None:
            return b""
        if isinstance(value, bytes):
            return value
        raise TypeError(f"a handler returned {type(value).__name__}; expected bytes, text, a dict, a Deferred or a resource")

    def _finish(self, request: JanusRequest, body: Any) -> None:
        if body is NOT_DONE_YET or request.gone or request.finished:
            return
        if body:
            if not request.startedWriting:
                request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
        request.finish()

    def _page(self, request: JanusRequest, relative: str, ctype: str | None, status: int | None, *, conditional: bool, within: str = "") -> Any:
        page = self.pages.get(relative, within)
        if page is None:
            if self.pages.refused(relative, within):
                emit("janustls.web.page_refused", "port {port}: {peer} asked for {path}, which is never served",
                     port=self.runtime.port.name, peer=_address_text(request.connection.peer), path=request.path.decode("latin-1"))  # fmt: skip
            return self._status(request, 404, "Not Found", "Nothing is served at this URL.")
        request.setHeader(b"content-type", (ctype or page.content_type).encode())
        if status is not None:
            request.setResponseCode(status)
        if conditional:
            request.setHeader(b"etag", page.etag)
            request.setHeader(b"last-modified", page.last_modified)
            request.setHeader(b"cache-control", b"no-cache")
            inm = request.getHeader(b"if-none-match")
            if inm is not None:
                if page.etag in [t.strip() for t in inm.split(b",")] or inm.strip() == b"*":
                    request.setResponseCode(http.NOT_MODIFIED)
                    return b""
            elif request.setLastModified(page.mtime) == http.CACHED:
                return b""
        else:
            request.setHeader(b"cache-control", b"no-store")
        return page.body

    def _redirect(self, request: JanusRequest, url: str, status: int) -> None:
        request.setResponseCode(status)
        request.setHeader(b"location", url.encode("utf-8"))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        self._finish(request, f'<!DOCTYPE html><a href="{html.escape(url)}">{html.escape(url)}</a>\n'.encode())

    # -- exceptions and plain statuses -------------------------------------------------------------------

    def _forbidden(self, request: JanusRequest, verdict: Verdict) -> None:
        refusal = verdict.refusal(self._subject(request))
        assert refusal is not None
        self.runtime.refused += 1
        chain = request.connection.verified_chain
        log_refusal(self.runtime.port.name, _address_text(request.connection.peer), refusal, verdict.rule, chain[0] if chain else None)
        self._exception(request, Exc.FORBIDDEN, refusal, verdict.rule)

    def _exception(self, request: JanusRequest, exc: Exc, refusal: Refusal, cause: str) -> None:
        """Answer with the port's handler for `exc`, or a plain page of the same status."""
        request.exception, request.refusal = exc, refusal
        rule = self.table.exception(exc)
        status = (rule.status if rule is not None and rule.status else None) or exc.default_status
        emit(
            "janustls.web.exception",
            "port {port}: {exception} for {peer} on {path}: {refusal} ({cause})",
            port=self.runtime.port.name,
            peer=_address_text(request.connection.peer),
            exception=exc.value,
            path=request.path.decode("latin-1"),
            refusal=refusal,
            reason=refusal.reason.value,
            cause=cause,
            handler=rule.key if rule is not None else None,
        )
        if rule is None:
            self._status(request, status, http.RESPONSES.get(status, b"Error").decode(), _MESSAGES.get(exc, ""), exc=exc)
            return
        if rule.action is Action.REDIRECT:
            self._redirect(request, rule.target, rule.status or 302)
            return
        if rule.action is Action.PAGE and request.wants_json():
            self._status(request, status, http.RESPONSES.get(status, b"Error").decode(), _MESSAGES.get(exc, ""), exc=exc)
            return
        request.setResponseCode(status)
        res = Resolution(rule, (), None, rule.content_type)
        if rule.action is Action.PAGE:
            self._finish(request, self._page(request, rule.target, rule.content_type, status, conditional=False))
            return
        self._finish(request, self._call(request, rule, res))

    def _status(self, request: JanusRequest, status: int, title: str, message: str, *, exc: Exc | None = None, event: str | None = None) -> None:
        if event is not None:
            emit(event, "port {port}: {status} for {peer} on {path}", port=self.runtime.port.name, status=status,
                 peer=_address_text(request.connection.peer), path=request.path.decode("latin-1"))  # fmt: skip
        request.setResponseCode(status)
        if status == 413:  # the rest of the body is not read: the connection closes after the answer
            request.setHeader(b"connection", b"close")
            if request.channel is not None:
                request.channel.persistent = False
        if request.wants_json():
            doc: dict[str, Any] = {"status": status, "title": title, "message": message}
            if exc is not None:
                doc["exception"] = exc.value
            if request.refusal is not None:
                doc["reason"] = request.refusal.reason.value
                doc["detail"] = str(request.refusal)
            request.setHeader(b"content-type", b"application/json")
            body = json.dumps(doc).encode()
        else:
            detail = f"<p>Reason: {html.escape(request.refusal.reason.description)}</p>" if request.refusal is not None else ""
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            body = (f"<!DOCTYPE html><html><head><title>{status} {html.escape(title)}</title></head>"
                    f"<body><h1>{status} {html.escape(title)}</h1><p>{html.escape(message)}</p>{detail}</body></html>\n").encode()  # fmt: skip
        self._finish(request, body)

    def _handler_error(self, request: JanusRequest, rule: Rule, failure: Failure) -> None:
        emit(
            "janustls.handler.error",
            "port {port}: handler {handler} raised for {peer}: {error}",
            LogLevel.error,
            port=self.runtime.port.name,
            handler=rule.value,
            peer=_address_text(request.connection.peer),
            error=failure.getErrorMessage(),
            log_failure=failure,
        )
        if request.gone or request.finished:
            return
        if request.startedWriting:
            request.janus_protocol.close()
            return
        request.responseHeaders.removeHeader(b"content-type")
        self._status(request, 500, "Internal Server Error", "The handler for this URL failed; the error is logged.")

    def _failed(self, failure: Failure, request: JanusRequest) -> None:
        rule = request.rule or Rule(-1, "", "janustls", Kind.ON, None, "")
        self._handler_error(request, rule, failure)

    # -- SSLPROTOCOLERR ------------------------------------------------------------------------------------

    def protocol_error(self, protocol: WebProtocol, reason: Failure | None) -> None:
        """A handshake that failed for a reason other than the client certificate: the log hook."""
        rule = self.table.exception(Exc.SSLPROTOCOLERR)
        if rule is None or reason is None or not isinstance(reason.value, SSL.Error):
            return
        if refusal_for_failure(protocol.transport, reason) is not None:
            return
        from janustls.tls import failure_text

        info = ProtocolError(self.runtime.port.name, _address_text(protocol.peer_address()), failure_text(reason))
        try:
            rule.handler(info)
        except Exception as e:
            emit("janustls.handler.error", "port {port}: SSLPROTOCOLERR hook {handler} raised: {error}", LogLevel.error,
                 port=self.runtime.port.name, handler=rule.value, error=f"{type(e).__name__}: {e}", log_failure=Failure())  # fmt: skip

