"""Log events with stable identifiers: the catalogue, and the one function that emits them.

Every event carries `event_id` (below), so log processors, metrics and tests can select
events without parsing text.  Identifiers are part of the interface: add, never rename.
"""

from __future__ import annotations

from time import time as _time
from typing import Any

from twisted.logger import Logger, LogLevel

from janustls.core.reasons import Reason

__all__ = ["emit", "log", "CATALOGUE"]

log = Logger(namespace="janustls")
_LEVELS = frozenset(LogLevel.iterconstants())

CATALOGUE: dict[str, str] = {
    "janustls.port.listening": "a port started listening (port, address)",
    "janustls.port.stopped": "a port stopped listening",
    "janustls.port.ca_added": "a CA certificate was added to a port (Janus MSIR.0642)",
    "janustls.conn.accepted": "a TLS handshake completed (port, peer, version, cipher, subject)",
    "janustls.conn.closed": "a connection ended (port, peer, bytes in/out, seconds)",
    "janustls.conn.limit": "a connection was refused: the port's max_connections is reached, or with "
    "limit_key = max_connections_per_client, that client address's share",
    "janustls.conn.idle_timeout": "a connection was closed after idle_timeout seconds without application progress",
    "janustls.conn.close_forced": "a closing connection was aborted: its client took none of the remaining "
    "output, or did not answer the TLS close, for the close grace period (port, peer, unsent bytes)",
    "janustls.handshake.timeout": "a client did not finish its handshake within handshake_timeout",
    "janustls.handshake.failed": "a handshake failed for a reason other than the client certificate "
    "(protocol version, ciphers, garbage; Janus SSLPROTOCOLERR)",
    "janustls.handshake.abandoned": "a client closed the connection before its handshake finished",
    "janustls.handler.error": "a handler raised; its connection was closed, the port keeps serving",
    "janustls.web.exception": "a webserv port answered a request with an exception rule (SSLNOCERTERR, SSLCERTERR, "
    "FORBIDDEN) or its default page (port, peer, path, exception, reason, cause: the rule or setting)",
    "janustls.web.fallback": "a client that cannot be asked for a certificate mid-connection was redirected to the "
    "rule's fallback= URL (port, peer, path, why, url)",
    "janustls.web.body_too_large": "a request body exceeded the rule's max_body (or the port's): 413, and the connection closed",
    "janustls.web.bad_path": "a request path that cannot be normalised safely (encoded separator, NUL, `;`, invalid or "
    "overlong UTF-8, a segment ending in a dot or space, climbing above /): 400",
    "janustls.web.bad_request": "a request llhttp refuses (bad request line or version, conflicting or malformed framing, obs-fold, invalid header bytes, a bare LF): 400, closed",
    "janustls.asgi.started": "an ASGI app's lifespan startup completed (or it has none): its requests are served",
    "janustls.asgi.startup_failed": "an ASGI app's lifespan startup failed: its message",
    "janustls.asgi.stopping": "the server stops because an ASGI app failed to start",
    "janustls.asgi.shutdown_failed": "an ASGI app's lifespan shutdown failed: its message",
    "janustls.web.headers_too_large": "a header line or header section over max_header_bytes: 431, and the connection closed",
    "janustls.web.header_timeout": "a client did not finish its request headers within header_timeout: closed",
    "janustls.web.body_timeout": "a client did not finish its request body within body_timeout: closed",
    "janustls.web.keepalive_timeout": "a connection waited keepalive_timeout for its next request: closed",
    "janustls.web.h2_http11_required": "an HTTP/2 stream whose rule needs a certificate the connection has not sent "
    "(and HTTP/1.1 could ask for) was reset with HTTP_1_1_REQUIRED; the client retries over HTTP/1.1",
    "janustls.web.h2_limit": "an HTTP/2 connection passed one of its limits (kind: streams, header_list, resets, "
    "continuation, pings, settings): GOAWAY, and the connection closed",
    "janustls.web.h2_protocol_error": "an HTTP/2 connection broke the protocol (h2 refused a frame): GOAWAY, closed",
    "janustls.web.page_refused": "a page rule was asked for a file janustls never serves (key material, the port-definition "
    "file, a dotfile, a PEM private key, or a file outside the rule's directory): 404",
    "janustls.proxy.connected": "a proxy port connected a client to its backend (port, peer, subject, backend)",
    "janustls.proxy.backend_failed": "a proxy port could not reach its backend (refused, connect_timeout, DNS); "
    "the client was closed cleanly, the port keeps serving (port, peer, backend, cause)",
    "janustls.proxy.closed": "a proxied connection ended (port, peer, cause, bytes up and down, seconds)",
    "janustls.proxy.header_received": "a PROXY v1/v2 header named the client (port, peer, via: the balancer)",
    "janustls.proxy.header_invalid": "a connection on a proxy_protocol = yes port had no valid PROXY header "
    "and was closed (port, peer, detail)",
    "janustls.proxy.bad_server_name": "a client's SNI name is no host name (a label over 63 characters, an empty "
    "label, non-ASCII bytes); a forward_identity = proxy-v2 port sent the header without PP2_TYPE_AUTHORITY "
    "(port, peer, detail)",
    "janustls.request.certificate": "a mid-connection certificate request got a verified certificate",
    "janustls.request.no_certificate": "a mid-connection certificate request got no certificate",
    "janustls.request.refused": "a mid-connection certificate request got a certificate the port refused "
    "(reason, as at the handshake); the connection was closed",
    "janustls.request.unsupported": "a connection could not be asked (TLS 1.3 without post-handshake "
    "authentication, no secure renegotiation); the request answered None",
    "janustls.request.declined": "the client refused to renegotiate; the connection was closed",
    "janustls.request.timeout": "the client did not answer a mid-connection request within request_timeout",
    "janustls.request.closed": "the connection closed while a mid-connection request was under way",
    "janustls.port.failed": "a port could not listen on its address (port, listen, error)",
    "janustls.status.listening": "the status listener serves /status and /metrics (address)",
    "janustls.status.failed": "the status listener could not listen (listen, error)",
    "janustls.reload.started": "a reload began: the port-definition file is read again (source, why: signal or call)",
    "janustls.reload.done": "a reload swapped in the new definitions for new connections (kept, added, removed ports)",
    "janustls.reload.failed": "a reload found errors and changed nothing (errors: every located problem)",
    "janustls.crl.reloaded": "a CRL file changed on disk and the port now uses it for new connections (port, path)",
    "janustls.crl.failed": "a changed CRL file could not be used; the port keeps the CRLs it had (port, path, error)",
    "janustls.crl.fetched": "a CRL was fetched from its crl_url into its cache file (port, url, outcome)",
    "janustls.crl.fetch_failed": "a CRL could not be fetched from its crl_url (unreachable, not a CRL, a bad "
    "signature, older than the cached one); the cached copy stays in use (port, url, error)",
    "janustls.crl.expired": "a CRL's nextUpdate has passed (port, issuer, next_update, policy: tolerate or refuse)",
    "janustls.ocsp.answer": "an OCSP responder was asked about a client certificate (port, url, subject, serial, "
    "status: good, revoked or unavailable, cause, next_update); the verified answer is cached until nextUpdate",
    "janustls.ocsp.tolerated": "no usable OCSP answer about a client certificate, admitted because ocsp_fail = "
    "tolerate (port, url, subject, depth, cause)",
    "janustls.staple.fetched": "a port fetched a fresh OCSP response about its own certificate and staples it "
    "(port, url, next_update)",
    "janustls.staple.failed": "a port could not get a usable OCSP response about its own certificate; it serves "
    "without a staple and retries (port, url, cause, retry)",
    "janustls.cert.rotated": "a port's certificate or private_key file changed and the new pair serves new "
    "connections (port, serial, not_after)",
    "janustls.cert.rotation_failed": "a changed certificate or private_key file cannot be used (broken, mismatched, "
    "expired); the port keeps serving the old pair (port, paths, error)",
    "janustls.log.json": "JSON log lines begin (format: one JSON object per line, each with event_id)",
    "janustls.workers.started": "the parent started a worker process (worker, pid)",
    "janustls.workers.exited": "a worker process ended (worker, pid, status)",
    "janustls.workers.crash_loop": "a worker keeps ending before it serves; its next start waits longer "
    "(worker, fails, delay in seconds)",
    "janustls.workers.gave_up": "every worker ended before serving CRASH_LIMIT times in a row and none serves: the "
    "parent stops with a non-zero exit status (limit, code)",
    "janustls.tickets.unavailable": "session ticket keys cannot be shared here (no way to set them in this OpenSSL "
    "build); each worker resumes only its own sessions (worker, error)",
    "janustls.shutdown.draining": "shutting down: ports closed, open connections get until the deadline (open, seconds)",
    "janustls.shutdown.done": "shutdown finished (left: connections still open at the deadline, then closed)",
    **{
        r.event_id: f"a client was refused: {r.description} (port, peer, reason, depth and subject of the "
        "certificate at fault; serial (hex), fingerprint (SHA-256) and issuer of the client's own certificate, "
        "when it sent one; rule, when an identity or web rule refused)"
        for r in Reason
    },
}


def emit(event_id: str, text: str, level: LogLevel = LogLevel.info, **fields: Any) -> None:
    """Emit one catalogued event; `text` is a twisted.logger format string over `fields`.

    The event is the one `log.emit(level, text, event_id=..., **fields)` makes, handed
    to the observer directly: Logger.emit checks the level against a sorted list of
    every level on each call, a cost paid on every connection (twice).
    """
    if level not in _LEVELS:
        log.emit(level, text, event_id=event_id, **fields)  # let Logger report the bad level
        return
    log.observer(
        {
            "event_id": event_id,
            **fields,
            "log_logger": log,
            "log_level": level,
            "log_namespace": log.namespace,
            "log_source": log.source,
            "log_format": text,
            "log_time": _time(),
        }
    )
