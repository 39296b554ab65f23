"""A webserv request: twisted.web's Request answering the connection's certificate calls, and
Apache mod_ssl's SSL_* variables."""

from __future__ import annotations

import datetime
import io
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes as unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.server import Request
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

    def limits_for(self, method: bytes, path: bytes) -> tuple[int, int | None]: ...


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
    #: The request path in its normal form (janustls.core.webpath), set when the request is served.
    normal_path: str | None = None
    #: The header lines as the client sent them, in order (set by the channel).
    raw_headers: list[tuple[bytes, bytes]] = []  # noqa: RUF012  # never mutated: the channel assigns each request its own
    #: After an Upgrade request's head: the bytes read so far (None: no Upgrade).
    upgrade_rest: bytes | None = None

    def process(self) -> None:
        """twisted.web's `Request.process` without the per-request work a webserv port does not need:
        the site has one leaf resource (no traversal, no encoder lookup), and the Date header is
        formatted once per second, not per request."""
        site = self.site = self.channel.site  # type: ignore[attr-defined]  # the channel is our JanusChannel (twisted.web declares an HTTPChannel)
        headers = self.responseHeaders
        headers.setRawHeaders(b"server", _SERVER)
        headers.setRawHeaders(b"date", [http_date()])
        self.prepath = []
        self.postpath = [unquote(p) for p in self.path[1:].split(b"/")]
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(Failure())

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
        proto = self.janus_protocol
        command, path = self.method, self.uri  # set by the channel from the request line
        if isinstance(command, bytes) and isinstance(path, bytes):
            limit, self._hold_limit = proto.factory.limits_for(command, path)
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


_SERVER = [twisted_web_version]
_date: list[Any] = [0, b""]


def http_date(now: float | None = None) -> bytes:
    """The HTTP Date header value, formatted once per second."""
    second = int(time.time() if now is None else now)
    if _date[0] != second:
        _date[0], _date[1] = second, datetimeToString(second)
    return _date[1]  # type: ignore[no-any-return]  # _date is [second, its Date value (bytes)]


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
