"""ASGI scopes for web ports, and telling ASGI applications from WSGI ones: pure, no reactor.

The TLS extension follows the asgiref spec ("TLS Extension", version 0.2): every key is filled
(`server_cert`, `client_cert_chain`, `client_cert_name`, `client_cert_error`, `tls_version`,
`cipher_suite`); janustls adds its own fields under `extensions["janustls"]`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

__all__ = ["app_kind", "tls_extension", "http_scope", "TLS_VERSIONS", "CIPHER_SUITES", "ASGI_VERSION"]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}

#: OpenSSL's protocol names -> the integers the spec asks for (the TLS wire versions).
TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
#: OpenSSL's cipher names -> IANA cipher suite numbers (those janustls's TLS policy allows).
CIPHER_SUITES = {
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    "TLS_AES_128_CCM_SHA256": 0x1304,
    "TLS_AES_128_CCM_8_SHA256": 0x1305,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    "DHE-RSA-AES128-GCM-SHA256": 0x009E,
    "DHE-RSA-AES256-GCM-SHA384": 0x009F,
    "ECDHE-ECDSA-AES128-SHA256": 0xC023,
    "ECDHE-RSA-AES128-SHA256": 0xC027,
    "ECDHE-ECDSA-AES256-SHA384": 0xC024,
    "ECDHE-RSA-AES256-SHA384": 0xC028,
}


def _parameters(fn: Any) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


def app_kind(app: Any) -> str | None:
    """ "asgi" for an ASGI 3 application (`async def app(scope, receive, send)`, or an object whose
    `__call__` is one), "wsgi" for a callable taking (environ, start_response), None otherwise."""
    if not callable(app):
        return None
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(type(app), "__call__", app)  # noqa: B004  # the method itself, to inspect; callable() is tested above
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return "asgi"
    n = _parameters(app)
    if n == 3:
        return "asgi"  # a plain callable returning an awaitable (an ASGI middleware wrapper)
    if n == 2:
        return "wsgi"
    return None


def tls_extension(
    *,
    server_cert: str | None,
    chain: Sequence[str],
    subject: str | None,
    error: str | None,
    tls_version: str,
    cipher: str,
) -> dict[str, Any]:
    """The asgiref TLS extension (0.2) for one connection (PEM strings; OpenSSL names in)."""
    return {
        "server_cert": server_cert,
        "client_cert_chain": list(chain),
        "client_cert_name": subject,
        "client_cert_error": error,
        "tls_version": TLS_VERSIONS.get(tls_version),
        "cipher_suite": CIPHER_SUITES.get(cipher),
    }


def mount_paths(path: str, prefix: str, mount: str) -> tuple[str, str]:
    """(root_path, path) for an app mounted at `prefix`: ASGI's `path` is always the full path
    (as uvicorn's --root-path gives it); `root_path` is the prefix unless mounted at the root."""
    prefix = prefix.rstrip("/")
    if mount == "root" or not path.startswith(prefix):
        return "", path
    return prefix, path


def http_scope(
    *,
    kind: str,
    method: str,
    path: str,
    raw_path: bytes,
    query: bytes,
    http_version: str,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    root_path: str,
    extensions: dict[str, Any],
    state: dict[str, Any] | None,
    subprotocols: Sequence[str] = (),
) -> dict[str, Any]:
    """An ASGI `http` or `websocket` scope."""
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": ASGI_VERSION,
        "http_version": http_version,
        "scheme": "https" if kind == "http" else "wss",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
        "extensions": extensions,
    }
    if kind == "http":
        scope["method"] = method
    else:
        scope["subprotocols"] = list(subprotocols)
    if state is not None:
        scope["state"] = dict(state)
    return scope
