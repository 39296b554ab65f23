"""Passing the verified identity to an HTTP backend as request headers (pure).

A web rule `ON /api/* = forward http://127.0.0.1:5050/api/*` sends the request on to
a plain HTTP backend with the client's identity in `X-SSL-Client-*` headers.  Every
incoming header whose name reads as one janustls sets is removed first, in any case and
with `_` or `-` (many servers, WSGI and CGI among them, read `X-SSL-Client_CN` as
`X-SSL-Client-CN`), so a client cannot forge one; the backend must only be reachable
through janustls.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from janustls.core.certinfo import CertChain
from janustls.core.reasons import Refusal

__all__ = [
    "HEADER_PREFIX",
    "FORWARDED_HEADERS",
    "Backend",
    "parse_backend",
    "identity_headers",
    "is_identity_header",
    "canonical_header",
]

HEADER_PREFIX = "X-SSL-Client-"
_PREFIX_CANON = b"x-ssl-client"
#: Other request headers janustls sets on a forwarded request (incoming ones are removed).
FORWARDED_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})


@dataclass(frozen=True)
class Backend:
    host: str
    port: int
    path: str


def parse_backend(url: str) -> Backend:
    """An `http://host[:port]/path` backend URL; ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: forward takes an http:// URL (the backend behind janustls)")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    if parts.username or parts.password or parts.fragment:
        raise ValueError(f"{url!r}: no user, password or fragment in a backend URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Backend(parts.hostname, port, path)


def canonical_header(name: bytes) -> bytes:
    """A header name as servers that fold case and `_`/`-` read it."""
    return name.strip().lower().replace(b"_", b"-")


def is_identity_header(name: bytes) -> bool:
    """Whether a request header is one janustls owns (removed from what clients send)."""
    canon = canonical_header(name)
    return canon.startswith(_PREFIX_CANON) or canon in FORWARDED_HEADERS


def identity_headers(chain: CertChain, refusal: Refusal | None = None) -> dict[str, str]:
    """The identity headers for a connection: Verify always, the rest with a certificate.

    Several SANs are joined with ", "; the certificate is URL-encoded PEM (as nginx's
    $ssl_client_escaped_cert), so every value fits on one header line.
    """
    h = HEADER_PREFIX
    leaf = chain.certificate(0)
    if leaf is None:
        return {h + "Verify": f"FAILED:{refusal.reason.value}" if refusal is not None else "NONE"}
    out = {
        h + "Verify": "SUCCESS",
        h + "S-DN": chain.info("SUBJECT") or "",
        h + "I-DN": chain.info("ISSUER") or "",
        h + "Serial": chain.info("SERIAL") or "",
        h + "Fingerprint": chain.info("FINGERPRINT") or "",
        h + "Not-After": chain.info("NOTAFTER") or "",
        h + "Cert": urllib.parse.quote(chain.info("PEM") or "", safe=""),
    }
    for name, item in (
        ("CN", "CN"),
        ("SAN-DNS", "SAN_DNS"),
        ("SAN-Email", "SAN_EMAIL"),
        ("SAN-URI", "SAN_URI"),
        ("SAN-IP", "SAN_IP"),
    ):
        values = chain.values(item)
        if values:
            out[h + name] = ", ".join(values)
    return out
