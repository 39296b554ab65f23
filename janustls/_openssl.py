"""The one home of private or version-bound OpenSSL calls.

pyOpenSSL does not expose everything janustls needs (an error string for a verify error
number, one option bit, post-handshake authentication).  Each use of cryptography's raw
bindings or of a private attribute lives here, feature-detected at import, so an upgrade
that removes one fails a test that names it instead of a production connection.
"""

from __future__ import annotations

from typing import Any, Callable

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

__all__ = [
    "OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION",
    "HAS_POST_HANDSHAKE_AUTH",
    "verify_error_string",
    "connection_pointer",
    "tls_protocol_of",
    "VERIFY_POST_HANDSHAKE",
    "verify_client_post_handshake",
    "watch_client_finished",
    "drive_handshake",
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


#: The verify-mode bit that defers the certificate request until we ask (TLS 1.3).
VERIFY_POST_HANDSHAKE: int = int(getattr(_lib, "SSL_VERIFY_POST_HANDSHAKE", 0))


def verify_client_post_handshake(connection: SSL.Connection) -> bool:
    """Queue a TLS 1.3 CertificateRequest; False (and nothing sent) if the client cannot take one.

    OpenSSL refuses at once with "extension not received" when the client did not
    offer post-handshake authentication; the connection is unharmed.
    """
    if not HAS_POST_HANDSHAKE_AUTH:
        return False
    if _lib.SSL_verify_client_post_handshake(connection_pointer(connection)) == 1:
        return True
    _lib.ERR_clear_error()
    return False


def watch_client_finished(connection: SSL.Connection, seen: Callable[[], None]) -> None:
    """Call `seen` when OpenSSL reads the client's Finished (the end of a TLS 1.3 request).

    With OpenSSL 3 and 4 a post-handshake exchange fires no handshake-done event and
    the state returns to "negotiation finished" both before and after it; the state
    "read finished", seen by the info callback as it passes, is what marks the end.
    The callback only records: nothing may touch the transport inside it.
    """

    def info(conn: SSL.Connection, where: int, ret: int) -> None:
        if conn.get_state_string() == b"SSLv3/TLS read finished":
            seen()

    connection.set_info_callback(info)


def drive_handshake(tls_protocol: Any) -> None:
    """Let OpenSSL write its handshake messages now and send them (Twisted's private flush)."""
    try:
        tls_protocol.getHandle().do_handshake()
    except SSL.WantReadError:
        pass
    tls_protocol._flushSendBIO()  # noqa: SLF001


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


def set_store_purpose_ssl_client(store: Any) -> None:
    """Verify with the purpose a TLS server uses for client chains (`janustls explain`).

    A handshake sets it on its own store context; a bare `X509StoreContext` needs
    it on the store (pyOpenSSL has no setter; the store's pointer is private).
    """
    _lib.X509_STORE_set_purpose(store._store, _lib.X509_PURPOSE_SSL_CLIENT)  # noqa: SLF001
