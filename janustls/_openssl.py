"""The one home of private or version-bound OpenSSL calls.

pyOpenSSL does not expose everything janustls needs (an error string for a verify error
number, one option bit, post-handshake authentication).  Each use of cryptography's raw
bindings or of a private attribute lives here, feature-detected at import, so an upgrade
that removes one fails a test that names it instead of a production connection.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

__all__ = [
    "OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION",
    "HAS_POST_HANDSHAKE_AUTH",
    "verify_error_string",
    "connection_pointer",
    "tls_protocol_of",
]

_lib: Any = Binding.lib
_ffi: Any = Binding.ffi

#: Not exported by name; without it a renegotiation just resumes and no certificate comes.
OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION = 0x00010000

HAS_POST_HANDSHAKE_AUTH: bool = bool(
    getattr(_lib, "Cryptography_HAS_SSL_VERIFY_CLIENT_POST_HANDSHAKE", 0)
    and hasattr(_lib, "SSL_verify_client_post_handshake")
    and hasattr(_lib, "SSL_VERIFY_POST_HANDSHAKE")
)


def verify_error_string(errno: int) -> str:
    """OpenSSL's text for an X509_V_ERR number ("certificate has expired")."""
    if not errno:
        return ""
    try:
        return _ffi.string(_lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")
    except Exception:  # a binding without the function: the number still says it
        return f"verify error {errno}"


def connection_pointer(connection: SSL.Connection) -> Any:
    """The SSL* behind a pyOpenSSL connection (a private attribute of pyOpenSSL)."""
    return connection._ssl  # noqa: SLF001


def tls_protocol_of(connection: SSL.Connection) -> Any:
    """The Twisted TLS protocol driving a connection (Twisted stores it as the app data)."""
    return connection.get_app_data()
