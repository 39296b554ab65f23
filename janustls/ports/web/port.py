"""webserv ports: HTTP/1.1 (twisted.web; HTTP/2 with http2 = yes) over the port's TLS, dispatched by the rule table.

The port protocol (`WebProtocol`, a PortProtocol) owns one twisted.web HTTP channel
per connection and feeds it the decrypted bytes; the channel's requests are
`JanusRequest`s, which answer the connection object's certificate calls by delegating
to it.  Everything that can be decided once per connection is decided once and kept
on the protocol (the mod_ssl environ, the port's `allow` verdict, the connection-wide
exception); the rule match is cached per (method, path) by `janustls.core.rules`.

Certificate problems become responses the operator chose (exception rules):
SSLNOCERTERR, SSLCERTERR (with the typed reason), FORBIDDEN (identity rules), and
SSLPROTOCOLERR as a log hook for handshakes that fail on protocol grounds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.core.config import ClientCertMode, PortDefinition, WebRuleLine
from janustls.core.identity import Policy
from janustls.core.reasons import Reason, Refusal
from janustls.core.rules import Action, Exc, Rule, RuleTable, build_table
from janustls.errors import CertificateRequestUnsupported, ConfigError, ConfigErrors
from janustls.events import emit
from janustls.ports.access import build_policy, resolver_for
from janustls.ports.base import PortFactory, PortProtocol, PortRuntime, address_text
from janustls.ports.connection import Connection
from janustls.ports.refusals import log_refusal
from janustls.ports.web.actions import Actions, JanusWSGIResource
from janustls.ports.web.asgi import AsgiApp
from janustls.ports.web.channel import HttpLimits, JanusSite
from janustls.ports.web.dispatch import Dispatch, DispatchResource
from janustls.ports.web.h2channel import H2Channel, H2Limits
from janustls.ports.web.request import ssl_environ
from janustls.ports.web.responses import PageCache, Responses, inside
from janustls.ports.web.scope import app_kind, tls_extension
from janustls.tls._twisted import set_wsgi_threadpool, transport_producer, wsgi_threadpool
from janustls.tls.protocol import failure_text, refusal_for_failure, refused_leaf

__all__ = ["WebFactory", "WebProtocol", "WebRules", "ProtocolError", "page_exposures", "read_web_rules"]


@dataclass(frozen=True)
class WebRules:
    """A webserv port's rule table as read from its `[web:NAME]` lines, or the mistakes found in them."""

    section: str
    table: RuleTable | None
    errors: tuple[ConfigError, ...] = ()

    def tolerance(self, port: PortDefinition) -> tuple[bool, bool]:
        """What the port's TLS policy leaves to the web layer, decided by its exception rules:
        (a missing certificate, a refused one).  See `PortTLS.tolerate_missing`."""
        if self.table is None:
            return False, False
        exceptions = self.table.exceptions
        missing = port.client_cert is ClientCertMode.REQUIRE and Exc.SSLNOCERTERR in exceptions
        refused = Exc.SSLCERTERR in exceptions and (
            port.client_cert is not ClientCertMode.NONE or self.table.uses_client_cert
        )
        return missing, refused


def read_web_rules(port: PortDefinition, procs: Path, lines: Sequence[WebRuleLine]) -> WebRules:
    """Read a webserv port's rule table (handlers resolved in the procedure library); never raises."""
    kind, _, name = port.section.partition(":")
    section = f"web:{name.strip() or port.name}" if kind.strip().lower() == "port" else f"web:{port.name}"
    try:
        table = build_table(lines, source=port.source, section=section, resolve=resolver_for(procs, resources=True))
    except ConfigErrors as e:
        return WebRules(section, None, tuple(e.errors))
    return WebRules(section, table)


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
            if inside(real, root):
                found.append((rule, Path(real)))
    return found


# -- SSLPROTOCOLERR -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolError:
    """What an SSLPROTOCOLERR hook receives: a handshake that failed on protocol grounds."""

    port: str
    peer: str
    detail: str


class WebProtocol(PortProtocol):
    """One TLS connection of a webserv port, carrying an HTTP/1.1 channel, or an HTTP/2 one when
    ALPN chose h2 (`http2 = yes`)."""

    factory: WebFactory
    channel: Any = None
    _env: tuple[Any, dict[str, str]] | None = None
    _gate: tuple[Any, tuple[Exc, Refusal, str] | None] | None = None
    _asgi_ext: tuple[Any, dict[str, Any]] | None = None
    _port_verdict: Any = None
    #: Set first thing when the connection is lost, before a pending certificate request
    #: answers (Chromium drops the connection when asked, then retries on a new one).
    lost = False
    #: idle_timeout counts from the last whole request received or answered (and output
    #: the client took): a client trickling a request byte by byte gains nothing.
    bytes_are_progress = False

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # the same None default as PortProtocol.connectionLost, passed on to it
        self.lost = True
        super().connectionLost(reason)

    def close(self) -> None:
        """Close even while twisted.web's channel is registered as the transport's producer."""
        if transport_producer(self.transport) is not None:
            self.transport.unregisterProducer()
        super().close()

    def connection_ready(self, connection: Connection) -> None:
        if self.factory.runtime.port.http2 and self.transport.getHandle().get_alpn_proto_negotiated() == b"h2":
            self.channel = H2Channel(self.factory.site, self, self.factory.h2_limits)
        else:
            self.channel = self.factory.site.buildProtocol(self.peer_address())
        self.channel.makeConnection(self.transport)

    @property
    def http2(self) -> bool:
        return isinstance(self.channel, H2Channel)

    def can_request_certificate(self) -> tuple[bool, str]:
        if self.http2:
            return False, "HTTP/2 forbids asking for a certificate after the handshake (RFC 7540 9.2.1, RFC 8740)"
        return super().can_request_certificate()

    def can_request_over_http11(self) -> tuple[bool, str]:
        """Whether this client could be asked for a certificate over HTTP/1.1 (HTTP_1_1_REQUIRED)."""
        return super().can_request_certificate()

    def request_certificate(self, require: bool = False) -> defer.Deferred[list[x509.Certificate]]:
        if self.http2:
            return defer.fail(CertificateRequestUnsupported(self.can_request_certificate()[1]))
        return super().request_certificate(require)

    def dataReceived(self, data: bytes) -> None:
        """`PortProtocol.dataReceived` and `bytes_received` in one call (a whole request, not a
        byte, counts as progress): one frame fewer per read."""
        channel = self.channel
        if channel is None or self._held is not None:
            PortProtocol.dataReceived(self, data)
            return
        self._bytes_in += len(data)
        channel.dataReceived(data)

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

    def asgi_extensions(self) -> dict[str, Any]:
        """The ASGI scope's `extensions` for this connection: the TLS extension (every key) and
        janustls's own fields; once per certificate (again when one arrives mid-connection)."""
        conn = self.connection
        assert conn is not None
        leaf = conn.certificate()
        if self._asgi_ext is None or self._asgi_ext[0] is not leaf:
            refusal = self.transport.refusal
            chain = conn.verified_chain
            pems = [c.public_bytes(Encoding.PEM).decode("ascii") for c in chain]
            tls = tls_extension(server_cert=self.factory.server_cert_pem, chain=pems,
                                subject=leaf.subject.rfc4514_string() if leaf is not None else None,
                                error=str(refusal) if leaf is None and refusal is not None else None,
                                tls_version=conn.tls_version, cipher=conn.cipher)  # fmt: skip
            info = (
                {
                    item: conn.cert_info(item)
                    for item in ("CN", "O", "OU", "C", "L", "ST", "EMAIL", "SAN_DNS", "SAN_URI", "SERIAL")
                }
                if leaf is not None
                else {}
            )
            janus = {"port": self.factory.runtime.port.name, "cert_levels": conn.cert_levels(), "cert_info": info,
                     "ssl_environ": self.ssl_environ(), "refusal": refusal.reason.value if refusal is not None and leaf is None else None}  # fmt: skip
            self._asgi_ext = (leaf, {"tls": tls, "janustls": janus})
        return self._asgi_ext[1]

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
            found = (
                Exc.SSLNOCERTERR,
                Refusal(Reason.NO_CERTIFICATE, None, None, Reason.NO_CERTIFICATE.description),
                f"[{port.section}] client_cert = require",
            )
        if found is not None:
            self.factory.runtime.refused += 1
            log_refusal(port.name, address_text(conn.peer), found[1], refused_leaf(self.transport), rule=found[2])
        self._gate = (leaf, found)
        return found


class WebFactory(Dispatch, Actions, Responses, PortFactory):
    """A webserv port: its rule table, site, pages, WSGI thread pool and exception handling."""

    protocol = WebProtocol

    def __init__(self, runtime: PortRuntime, procs: Path, rules: WebRules, *, protected: Sequence[Path] = ()) -> None:
        """`rules`: the port's table as `read_web_rules` read it (its TLS policy was built with its
        `tolerance`, before this port)."""
        super().__init__(runtime)
        port = runtime.port
        self.procs = procs
        section = rules.section
        errors: list[ConfigError] = list(rules.errors)  # the table's and the port's `allow` mistakes, reported together
        try:
            self.policy: Policy | None = build_policy(port, procs)
        except ConfigErrors as e:
            errors.extend(e.errors)
        if errors or rules.table is None:
            raise ConfigErrors(errors)
        self.table: RuleTable = rules.table
        self.pages = PageCache(
            procs, (*protected, Path(port.source), port.certificate, port.private_key, *port.addca, *port.crl)
        )
        self.reactor = runtime.reactor
        # WSGI applications run in the reactor's thread pool: it lives as long as the process,
        # so connections that outlive a reload (PortTLSFactory.adopt) keep a running pool.
        self._wsgi: dict[int, JanusWSGIResource] = {}
        self._asgi: dict[int, AsgiApp] = {}
        self._resources: dict[int, bool] = {}
        apps: dict[int, AsgiApp] = {}
        for rule in self.table.rules:
            if rule.action is Action.WSGI:
                kind = app_kind(rule.handler)
                if kind == "asgi":
                    raise ConfigErrors(
                        [
                            ConfigError(
                                port.source,
                                section,
                                rule.key,
                                f"wsgi {rule.target} is an ASGI application; serve it with: asgi {rule.target}",
                            )
                        ]
                    )
                if not callable(rule.handler):
                    raise ConfigErrors(
                        [ConfigError(port.source, section, rule.key, f"wsgi {rule.target} is not a WSGI application")]
                    )
                self._wsgi[rule.index] = JanusWSGIResource(self.reactor, None, rule.handler)
            if rule.action is Action.ASGI:
                kind = app_kind(rule.handler)
                if kind != "asgi":
                    what = (
                        "a WSGI application; serve it with: wsgi " + rule.target
                        if kind == "wsgi"
                        else "not an ASGI 3 application (async def app(scope, receive, send))"
                    )
                    raise ConfigErrors([ConfigError(port.source, section, rule.key, f"asgi {rule.target} is {what}")])
                app = apps.get(id(rule.handler))
                if app is None:
                    app = apps[id(rule.handler)] = AsgiApp(rule.handler, rule.target, port.name)
                self._asgi[rule.index] = app
        self.server_cert_pem: str | None = None
        if self._asgi:
            try:
                first = x509.load_pem_x509_certificates(Path(port.certificate).read_bytes())[0]
                self.server_cert_pem = first.public_bytes(Encoding.PEM).decode("ascii")
            except (OSError, ValueError):
                self.server_cert_pem = None
        problems = []
        for rule in self.table.exceptions.values():
            if rule.action is Action.PAGE and self.pages.get(rule.target) is None:
                problems.append(
                    ConfigError(
                        port.source,
                        section,
                        rule.key,
                        f"page {rule.target} is not a readable file in the procedure library ({procs})",
                    )
                )
        for rule in self.table.rules:
            if rule.action is Action.PAGE and "*" not in rule.target and self.pages.get(rule.target) is None:
                problems.append(
                    ConfigError(
                        port.source,
                        section,
                        rule.key,
                        f"page {rule.target} is not a readable file in the procedure library ({procs})",
                    )
                )
            if rule.client_cert and port.client_cert is ClientCertMode.NONE and not port.addca:
                problems.append(
                    ConfigError(
                        port.source,
                        section,
                        rule.key,
                        "asks for a client certificate, but no CA is added for the port (addca =)",
                    )
                )
        if problems:
            raise ConfigErrors(problems)
        self.site = JanusSite(DispatchResource(self), timeout=None)
        self.site.reactor = self.reactor
        self._limits_seen = {}
        self.site.limits = HttpLimits(
            port.header_timeout, port.body_timeout, port.keepalive_timeout, port.max_header_bytes
        )
        self.h2_limits = H2Limits(port.h2_max_streams, port.h2_window, port.max_header_bytes, port.h2_max_resets,
                                  port.h2_max_pings, port.h2_max_settings, port.body_timeout, port.keepalive_timeout)  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------------

    def doStart(self) -> None:
        super().doStart()
        self.site.doStart()
        for app in {id(a): a for a in self._asgi.values()}.values():
            if not app.started and not app.ready.called:
                # callLater: under the asyncio reactor, inside the running asyncio loop (startup triggers run before it)
                self.reactor.callWhenRunning(self.reactor.callLater, 0, self._start_asgi, app)
        for resource in self._wsgi.values():
            if wsgi_threadpool(resource) is None:
                set_wsgi_threadpool(resource, self.reactor.getThreadPool())

    def _start_asgi(self, app: AsgiApp) -> None:
        """The app's lifespan startup (requests wait for it); a failed startup stops the server."""

        def failed(error: str) -> None:
            emit("janustls.asgi.stopping", "port {port}: stopping: ASGI app {app} failed to start: {error}", LogLevel.critical,
                 port=self.runtime.port.name, app=app.name, error=error)  # fmt: skip
            if self.reactor.running:
                self.reactor.stop()

        try:
            app.start(failed)
        except RuntimeError as e:  # no running asyncio loop: the reactor is not the asyncio one
            failed(f"{e} (asgi rules need Twisted's asyncio reactor)")
            return
        self.reactor.addSystemEventTrigger("before", "shutdown", app.stop)

    def doStop(self) -> None:
        super().doStop()
        self.site.doStop()

    # -- SSLPROTOCOLERR ------------------------------------------------------------------------------------

    def protocol_error(self, protocol: WebProtocol, reason: Failure | None) -> None:
        """A handshake that failed for a reason other than the client certificate: the log hook."""
        rule = self.table.exception(Exc.SSLPROTOCOLERR)
        if rule is None or reason is None or not isinstance(reason.value, SSL.Error):
            return
        if refusal_for_failure(protocol.transport, reason) is not None:
            return
        info = ProtocolError(self.runtime.port.name, address_text(protocol.peer_address()), failure_text(reason))
        try:
            rule.handler(info)
        except Exception as e:
            emit("janustls.handler.error", "port {port}: SSLPROTOCOLERR hook {handler} raised: {error}", LogLevel.error,
                 port=self.runtime.port.name, handler=rule.value, error=f"{type(e).__name__}: {e}", log_failure=Failure())  # fmt: skip
