"""A webserv request: twisted.web's Request answering the connection's certificate calls, and
Apache mod_ssl's SSL_* variables."""

from __future__ import annotations

import datetime
import io
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, AnyStr, Protocol
from urllib.parse import unquote_to_bytes as unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.http import NO_BODY_CODES, datetimeToString, parse_qs
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.server import version as twisted_web_version

from janustls.core.certinfo import CertChain
from janustls.core.forwarding import is_identity_header
from janustls.core.identity import Verdict
from janustls.core.reasons import Refusal
from janustls.core.rules import Exc, Rule, RuleTable
from janustls.ports.base import PortRuntime
from janustls.ports.connection import Connection

if TYPE_CHECKING:
    from janustls.tls.protocol import PortTLSProtocol

__all__ = [
    "JanusRequest",
    "WebPortProtocol",
    "WebPortFactory",
    "ssl_environ",
    "apache_time",
    "wants_json",
    "strip_identity_headers",
]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class WebPortFactory(Protocol):
    """What requests ask of the port's factory (`port.WebFactory`) while reading a request."""

    runtime: PortRuntime
    table: RuleTable

    def limits_for(self, method: bytes, path: bytes) -> int: ...


class WebPortProtocol(Protocol):
    """What requests and the HTTP channel ask of the port protocol (`port.WebProtocol`)."""

    factory: WebPortFactory
    connection: Connection | None
    transport: PortTLSProtocol
    #: (leaf, verdict): the port's identity rules judged this certificate.
    _port_verdict: tuple[x509.Certificate | None, Verdict] | None
    lost: bool
    bytes_are_progress: bool

    def progress(self) -> None: ...
    def gate(self) -> tuple[Exc, Refusal, str] | None: ...
    def asgi_extensions(self) -> dict[str, Any]: ...
    def ssl_environ(self) -> dict[str, str]: ...
    def close(self) -> None: ...
    def peer_address(self) -> Any: ...
    def can_request_over_http11(self) -> tuple[bool, str]: ...


# -- Apache mod_ssl's variables ---------------------------------------------------------------


def apache_time(t: datetime.datetime) -> str:
    """OpenSSL's ASN1_TIME_print format, as Apache sets SSL_CLIENT_V_START: `Jan  5 09:03:07 2026 GMT`."""
    t = t.astimezone(datetime.UTC)
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
    env = {
        "HTTPS": "on",
        "SSL_PROTOCOL": tls_version,
        "SSL_CIPHER": cipher,
        "SSL_VERSION_LIBRARY": SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode(),
    }
    leaf = chain.certificate(0)
    if leaf is None:
        env["SSL_CLIENT_VERIFY"] = f"FAILED:{refusal.reason.value}" if refusal is not None else "NONE"
        return env
    env["SSL_CLIENT_VERIFY"] = "SUCCESS"
    env["SSL_CLIENT_S_DN"] = leaf.subject.rfc4514_string()
    env["SSL_CLIENT_I_DN"] = leaf.issuer.rfc4514_string()
    for suffix, item in (
        ("CN", "CN"),
        ("O", "O"),
        ("OU", "OU"),
        ("C", "C"),
        ("L", "L"),
        ("ST", "ST"),
        ("Email", "EMAIL"),
    ):
        values = (
            chain.values(item)
            if item != "EMAIL"
            else [str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)]
        )
        for i, v in enumerate(values):
            env[f"SSL_CLIENT_S_DN_{suffix}" + (f"_{i}" if i else "")] = v
    for attr in leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[:1]:
        env["SSL_CLIENT_I_DN_CN"] = str(attr.value)
    serial = format(leaf.serial_number, "X")
    env["SSL_CLIENT_M_SERIAL"] = serial if len(serial) % 2 == 0 else "0" + serial
    env["SSL_CLIENT_M_VERSION"] = str(leaf.version.value + 1)
    env["SSL_CLIENT_V_START"] = apache_time(leaf.not_valid_before_utc)
    env["SSL_CLIENT_V_END"] = apache_time(leaf.not_valid_after_utc)
    remain = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
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
    """A twisted.web request that also answers the connection's certificate calls.

    Built lean: what twisted.web's `Request.__init__` makes for every request and most never
    use (the request `Headers`, the cookies parsed, the client and host addresses, the
    resource path segments) is made when first asked for, from the header lines the channel
    parsed (`raw_headers`).  A response whose body is known at once leaves through `respond`:
    one write with its head encoded in one pass.  Any channel that implements what twisted.web's
    `Request` asks of one (write, writeHeaders, requestDone, ...) can carry it; the one-write
    path is taken where the channel says it speaks HTTP/1.1 (`http11_channel`).
    """

    #: Set when an exception handler runs: which exception, and why.
    exception: Exc | None = None
    refusal: Refusal | None = None
    #: The wildcard parts of the rule that matched (`ON /app/*` on /app/x/y: ("x/y",)).
    rule_parts: tuple[str, ...] = ()
    rule: Rule | None = None
    _body_size = 0
    _body_limit: int | None = None
    over_limit = False
    gone = False
    #: The request path in its normal form (janustls.core.webpath), set when the request is served.
    normal_path: str | None = None
    #: The header lines as the client sent them, in order (set by the channel).
    raw_headers: list[tuple[bytes, bytes]] = []  # noqa: RUF012  # never mutated: the channel assigns each request its own
    #: After an Upgrade request's head: the bytes read so far (None: no Upgrade).
    upgrade_rest: bytes | None = None
    _request_headers: Headers | None = None
    _response_headers: Headers | None = None
    #: The Content-Type a `call` result gets unless the handler set one (encoded once per rule).
    _default_type: bytes | None = None
    _cookies_in: dict[bytes, bytes] | None = None
    _client: Any = None
    _host: Any = None
    _postpath: list[bytes] | None = None

    def __init__(self, channel: Any, *args: Any, **kw: Any) -> None:
        """twisted.web's signature (`queued` is deprecated; posted forms are always parsed)."""
        self.notifications = []
        self.channel = channel
        self.transport = channel.transport
        self.cookies = []
        self.queued = False
        self._parsePOSTFormSubmission = True
        self._adapterCache = {}  # components.Componentized (getSession keeps the session there)

    # -- made when first asked for ------------------------------------------------------------

    @property
    def requestHeaders(self) -> Headers:
        headers = self._request_headers
        if headers is None:
            headers = self._request_headers = Headers()
            for name, value in self.raw_headers:
                headers.addRawHeader(name, value)
        return headers

    @requestHeaders.setter
    def requestHeaders(self, headers: Headers) -> None:
        self._request_headers = headers

    @property
    def responseHeaders(self) -> Headers:
        headers = self._response_headers
        if headers is None:
            headers = self._response_headers = Headers()
        return headers

    @responseHeaders.setter
    def responseHeaders(self, headers: Headers) -> None:
        self._response_headers = headers

    def default_content_type(self, value: bytes | None) -> None:
        """The Content-Type of the response unless the handler sets one (a `call` result's)."""
        self._default_type = value

    @property
    def received_cookies(self) -> dict[bytes, bytes]:
        cookies = self._cookies_in
        if cookies is None:
            cookies = self._cookies_in = {}
            Request.parseCookies(self)
        return cookies

    @received_cookies.setter
    def received_cookies(self, cookies: dict[bytes, bytes]) -> None:
        self._cookies_in = cookies

    def parseCookies(self) -> None:
        """Parsed when `received_cookies` is first read."""

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.channel.getPeer()
        return self._client

    @client.setter
    def client(self, address: Any) -> None:
        self._client = address

    @property
    def host(self) -> Any:
        if self._host is None:
            self._host = self.channel.getHost()
        return self._host

    @host.setter
    def host(self, address: Any) -> None:
        self._host = address

    @property
    def postpath(self) -> list[bytes] | None:
        if self._postpath is None and self.path is not None:
            self._postpath = [unquote(p) for p in self.path[1:].split(b"/")]
        return self._postpath

    @postpath.setter
    def postpath(self, segments: list[bytes] | None) -> None:
        self._postpath = segments

    def getHeader(self, key: AnyStr) -> AnyStr | None:
        """A request header's last value (twisted.web's answer), read from the header lines as sent."""
        if self._request_headers is not None:
            return super().getHeader(key)
        name = (key.encode("latin-1") if isinstance(key, str) else key).lower()
        found = None
        for n, v in self.raw_headers:
            if n.lower() == name:
                found = v
        if found is None or isinstance(key, bytes):
            return found
        return found.decode("utf-8")  # text for a text key, as twisted.web's Headers

    # -- the request --------------------------------------------------------------------------

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """twisted.web's `requestReceived` (arguments from the query and a posted form), without
        looking at the request's headers unless it is a POST with a body."""
        content = self.content
        if command == b"POST" and content is not None and content.tell():
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
            return
        if content is not None:
            content.seek(0, 0)
        self.method, self.uri, self.clientproto = command, path, version
        if b"?" in path:
            self.path, query = path.split(b"?", 1)
            self.args = parse_qs(query, 1)
        else:
            self.path, self.args = path, {}
        self.process()

    def process(self) -> None:
        """twisted.web's `Request.process` without the per-request work a webserv port does not need:
        the site has one leaf resource (no traversal, no encoder lookup); the port's `serve`
        answers, and a body it returns leaves through `respond`."""
        site = self.site = self.channel.site  # type: ignore[attr-defined]  # the channel is our JanusChannel (twisted.web declares an HTTPChannel)
        self.prepath = []
        try:
            body = site.resource.factory.serve(self)
        except UnsupportedMethod:
            self.render(site.resource)  # twisted.web answers 405 (or fakes HEAD with GET)
            return
        except BaseException:
            self.processingFailed(Failure())
            return
        if body is NOT_DONE_YET:
            return
        if not isinstance(body, bytes):
            self.render(_Rendered(body))  # twisted.web's answer to a resource returning no bytes
            return
        self.respond(body)

    def respond(self, body: bytes) -> None:
        """Answer with `body` and finish: one write holding the status line, the headers and the
        body, where the channel speaks HTTP/1.1 and nothing was written yet; else through
        twisted.web's `write` and `finish`.  Gives what twisted.web's `render` gave: a
        Content-Length, text/html as the default type of a body, no body for HEAD, 204 or 304."""
        if self.finished or self.gone or self._disconnected:
            return
        channel = self.channel
        if self.startedWriting or self.producer is not None or not getattr(channel, "http11_channel", False):
            if not self.startedWriting:
                if self._default_type is not None and not self.responseHeaders.hasHeader(b"content-type"):
                    self.responseHeaders.setRawHeaders(b"content-type", [self._default_type])
                if body or self.method != b"HEAD":
                    self.setHeader(b"content-length", b"%d" % len(body))
            if body:
                self.write(body)
            self.finish()
            return
        code = self.code
        head = self.method == b"HEAD"
        bodyless = code in NO_BODY_CODES
        parts = [self.clientproto, b" %d " % code, self.code_message, b"\r\n"]
        stamp = typed = False
        headers = self._response_headers
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                if name == b"Content-Length":
                    continue
                if name == b"Content-Type":
                    typed = True
                elif name in (b"Server", b"Date"):
                    stamp = True
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        if not typed:
            if self._default_type is not None:
                parts += (b"Content-Type: ", self._default_type, b"\r\n")
            elif not bodyless and body:
                parts.append(b"Content-Type: text/html\r\n")
        if stamp and headers is not None:  # a handler set one of them: the other as usual
            if not headers.hasHeader(b"server"):
                parts += (b"Server: ", _SERVER[0], b"\r\n")
            if not headers.hasHeader(b"date"):
                parts += (b"Date: ", http_date(), b"\r\n")
        else:
            parts.append(server_and_date())
        if self.lastModified is not None and (headers is None or not headers.hasHeader(b"last-modified")):
            parts += (b"Last-Modified: ", datetimeToString(self.lastModified), b"\r\n")
        if self.etag is not None:
            parts += (b"ETag: ", self.etag, b"\r\n")
        for cookie in self.cookies:
            parts += (b"Set-Cookie: ", cookie, b"\r\n")
        if not bodyless and (body or not head):
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        else:
            parts.append(b"\r\n")
        if not (head or bodyless):
            parts.append(body)
        self.startedWriting = 1
        self.sentLength = len(body)
        channel.write_whole(b"".join(parts))  # type: ignore[attr-defined]  # an http11_channel: our JanusChannel
        self.finish()

    def respond_with(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer with `status`, the header lines `headers` as given (an ASGI app's) and `body`,
        and finish: one write where the channel speaks HTTP/1.1 and nothing was written yet.

        The names must be tokens and CR/LF in a value become spaces (as twisted.web's `Headers`
        does); a Content-Length is added when there is none, Server and Date when the lines
        have none; no body for HEAD, 204 or 304."""
        if self.finished or self.gone or self._disconnected:
            return
        self.setResponseCode(status)
        channel = self.channel
        if self.startedWriting or self.producer is not None or not getattr(channel, "http11_channel", False):
            out = self.responseHeaders
            for name, value in headers:
                out.addRawHeader(name, value)
            if body or (not self.startedWriting and self.method != b"HEAD" and status not in NO_BODY_CODES):
                if not self.startedWriting and not out.hasHeader(b"content-length"):
                    out.setRawHeaders(b"content-length", [b"%d" % len(body)])
                if body:
                    self.write(body)
            self.finish()
            return
        head = self.method == b"HEAD"
        bodyless = status in NO_BODY_CODES
        parts = [self.clientproto, b" %d " % status, self.code_message, b"\r\n"]
        length = server = date = False
        for name, value in headers:
            lower = _LOWER.get(name)
            if lower is None:
                lower = header_name(name)
            if lower == b"content-length":
                length = True
            elif lower == b"server":
                server = True
            elif lower == b"date":
                date = True
            if b"\r" in value or b"\n" in value:
                value = b" ".join(value.splitlines())
            parts += (name, b": ", value, b"\r\n")
        if self._response_headers is not None:  # Connection: close, set by the channel
            for name, values in self._response_headers.getAllRawHeaders():
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        if not server and not date:
            parts.append(server_and_date())
        else:
            if not server:
                parts += (b"Server: ", _SERVER[0], b"\r\n")
            if not date:
                parts += (b"Date: ", http_date(), b"\r\n")
        if not length and not bodyless and (body or not head):
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(b"\r\n")
        if body and not (head or bodyless):
            parts.append(body)
        self.startedWriting = 1
        self.sentLength = len(body)
        channel.write_whole(b"".join(parts))  # type: ignore[attr-defined]  # an http11_channel: our JanusChannel
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:  # the head goes out now: twisted.web's Server and Date (once per second)
            headers = self.responseHeaders
            if self._default_type is not None and not headers.hasHeader(b"content-type"):
                headers.setRawHeaders(b"content-type", [self._default_type])
            if not headers.hasHeader(b"server"):
                headers.setRawHeaders(b"server", _SERVER)
            if not headers.hasHeader(b"date"):
                headers.setRawHeaders(b"date", [http_date()])
        super().write(data)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    # The connection object (its PortProtocol is the TLS transport's wrapped protocol).
    @property
    def janus_protocol(self) -> WebPortProtocol:
        return self.channel.transport.wrappedProtocol  # type: ignore[no-any-return,union-attr]  # the TLS transport wraps the port's WebProtocol

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
        if length == 0:  # no body (most requests): no limit to look up, twisted.web's empty content
            self.content = io.BytesIO()
            return
        proto = self.janus_protocol
        command, path = self.method, self.uri  # set by the channel from the request line
        if isinstance(command, bytes) and isinstance(path, bytes):
            limit = proto.factory.limits_for(command, path)
        else:
            limit = proto.factory.runtime.port.max_body
        self._body_limit = limit
        if length is not None and length > limit:
            self.over_limit = True
            self.content = io.BytesIO()
            self.channel.refuse_body(self, limit)  # type: ignore[attr-defined]  # the channel is our JanusChannel (twisted.web declares an HTTPChannel)
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    def handleContentChunk(self, data: bytes) -> None:
        if self.over_limit:
            return
        self._body_size += len(data)
        if self._body_limit is not None and self._body_size > self._body_limit:
            self.over_limit = True
            self.channel.refuse_body(self, self._body_limit)  # type: ignore[attr-defined]  # the channel is our JanusChannel (twisted.web declares an HTTPChannel)
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    # idle_timeout counts whole requests (and answers), not bytes: see WebProtocol.  A request
    # received counts in JanusChannel.on_message_complete.
    def finish(self) -> None:
        if not self.finished and not self.gone:
            self.janus_protocol.progress()
        super().finish()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Header names seen, lower-cased (bounded): an app repeats the same few.
_LOWER: dict[bytes, bytes] = {}


def header_name(name: bytes) -> bytes:
    """`name` lower-cased, once checked to be an HTTP token (RFC 9110); ValueError if not."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    lower = name.lower()
    if len(_LOWER) < 1024:
        _LOWER[name] = lower
    return lower


class _Rendered:
    """A resource rendering to what a handler returned, for twisted.web's `render` to judge."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, request: Any) -> Any:
        return self.value


_SERVER = [twisted_web_version]
_date: list[Any] = [0, b"", b""]


def http_date(now: float | None = None) -> bytes:
    """The HTTP Date header value, formatted once per second."""
    second = int(time.time() if now is None else now)
    if _date[0] != second:
        value = datetimeToString(second)
        _date[0], _date[1], _date[2] = second, value, b"Server: " + _SERVER[0] + b"\r\nDate: " + value + b"\r\n"
    return _date[1]  # type: ignore[no-any-return]  # _date is [second, its Date value, both header lines] (bytes)


def server_and_date() -> bytes:
    """The Server and Date header lines of a response, encoded once per second."""
    if _date[0] != int(time.time()):
        http_date()
    return _date[2]  # type: ignore[no-any-return]  # _date is [second, its Date value, both header lines] (bytes)


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


def strip_identity_headers(request: Request) -> None:
    """Remove every request header that reads as one janustls sets (any case, `_` or `-`)."""
    headers = request.requestHeaders
    for name in [n for n, _ in headers.getAllRawHeaders() if is_identity_header(n)]:
        headers.removeHeader(name)
