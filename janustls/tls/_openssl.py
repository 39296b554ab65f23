"""The one home of private or version-bound OpenSSL calls.

pyOpenSSL does not expose everything janustls needs (an error string for a verify error
number, one option bit, post-handshake authentication).  Each use of cryptography's raw
bindings (cffi, the same `lib` pyOpenSSL uses) or of a private attribute lives here,
feature-detected at import, so an upgrade that removes one fails a test that names it
instead of a production connection.  The functions those bindings do not export at all
are reached by `_hidden`, quarantined apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from janustls.tls._twisted import flush_send

__all__ = [
    "OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION",
    "HAS_POST_HANDSHAKE_AUTH",
    "verify_error_string",
    "connection_pointer",
    "tls_protocol_of",
    "session_reused",
    "VERIFY_POST_HANDSHAKE",
    "verify_client_post_handshake",
    "watch_client_finished",
    "drive_handshake",
    "certificate_der",
    "verified_chain_der",
    "peer_certificate_der",
    "release_bio_buffers",
    "x509_pointer",
    "negotiated",
]

_lib: Any = Binding.lib
_ffi: Any = Binding.ffi

#: Not exported by name; without it a renegotiation just resumes and no certificate comes.
OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION = 0x00010000

HAS_POST_HANDSHAKE_AUTH: bool = bool(
    hasattr(_lib, "SSL_verify_client_post_handshake")
    and hasattr(_lib, "SSL_VERIFY_POST_HANDSHAKE")
    and getattr(_lib, "Cryptography_HAS_SSL_VERIFY_CLIENT_POST_HANDSHAKE", 1)
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
    """Let OpenSSL write its handshake messages now and send them (`_twisted.flush_send`)."""
    try:
        tls_protocol.getHandle().do_handshake()
    except SSL.WantReadError:
        pass
    flush_send(tls_protocol)


#: Protocol names by OpenSSL's version number, cipher names by the SSL_CIPHER pointer (OpenSSL's
#: static cipher table: a handful of entries for the process's life).
_version_names: dict[int, str] = {}
_cipher_names: dict[Any, str] = {}


def negotiated(connection: SSL.Connection) -> tuple[str, str]:
    """The protocol and cipher names of a connection ("TLSv1.3", "TLS_AES_256_GCM_SHA384"; "" for none).

    What `get_protocol_version_name()` and `get_cipher_name()` answer, in two binding calls
    instead of six and without decoding the names again on every connection.
    """
    ssl = connection._ssl  # noqa: SLF001
    number = _lib.SSL_version(ssl)
    version = _version_names.get(number)
    if version is None:
        version = _version_names[number] = _ffi.string(_lib.SSL_get_version(ssl)).decode("utf-8")
    pointer = _lib.SSL_get_current_cipher(ssl)
    if pointer == _ffi.NULL:
        return version, ""
    cipher = _cipher_names.get(pointer)
    if cipher is None:
        if len(_cipher_names) > 256:  # never with OpenSSL's static table; bounded all the same
            _cipher_names.clear()
        cipher = _cipher_names[pointer] = _ffi.string(_lib.SSL_CIPHER_get_name(pointer)).decode("utf-8")
    return version, cipher


def verify_error_string(errno: int) -> str:
    """OpenSSL's text for an X509_V_ERR number ("certificate has expired")."""
    if not errno:
        return ""
    try:
        text: str = _ffi.string(_lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")
        return text
    except Exception:  # a binding without the function: the number still says it
        return f"verify error {errno}"


def connection_pointer(connection: SSL.Connection) -> Any:
    """The SSL* behind a pyOpenSSL connection (a private attribute of pyOpenSSL)."""
    return connection._ssl  # noqa: SLF001


def tls_protocol_of(connection: SSL.Connection) -> Any:
    """The Twisted TLS protocol driving a connection (`PortTLS` stores it as the app data)."""
    return connection.get_app_data()


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the handshake resumed a session (pyOpenSSL does not say; proxy ports tell backends)."""
    return bool(_lib.SSL_session_reused(connection_pointer(connection)))


def set_store_purpose_ssl_client(store: Any) -> None:
    """Verify with the purpose a TLS server uses for client chains (`janustls explain`).

    A handshake sets it on its own store context; a bare `X509StoreContext` needs
    it on the store (pyOpenSSL has no setter; the store's pointer is private).
    """
    _lib.X509_STORE_set_purpose(store._store, _lib.X509_PURPOSE_SSL_CLIENT)  # noqa: SLF001


# -- certificates as DER without pyOpenSSL's per-certificate wrappers (the per-handshake path) --


#: Memory BIOs to encode certificates into, reused (taken and put back, so threads never share one):
#: a certificate is encoded in three binding calls instead of seven.
_der_bios: list[Any] = []
_DER_CHUNK = 16384
_der_chunk: Any = None
_mem_method: Any = None


def _x509_der(x509_ptr: Any) -> bytes:
    try:
        bio, buf = _der_bios.pop()
    except IndexError:
        global _mem_method
        if _mem_method is None:
            _mem_method = _lib.BIO_s_mem()
        bio = _lib.BIO_new(_mem_method)
        if bio == _ffi.NULL:
            raise MemoryError("BIO_new")
        buf = _ffi.new("char[]", _DER_CHUNK)
    try:
        if _lib.i2d_X509_bio(bio, x509_ptr) != 1:
            raise ValueError("cannot encode a certificate as DER")
        n = _lib.BIO_read(bio, buf, _DER_CHUNK)
        der = _ffi.buffer(buf, n)[:] if n > 0 else b""
        while n == _DER_CHUNK:  # a certificate over 16 KiB: the rest (the BIO is left empty)
            n = _lib.BIO_read(bio, buf, _DER_CHUNK)
            if n > 0:
                der += _ffi.buffer(buf, n)[:]
    except BaseException:
        _lib.BIO_free(bio)  # may hold bytes: not reused
        raise
    _der_bios.append((bio, buf))
    return der


def certificate_der(cert: Any, known: dict[Any, bytes] | None = None) -> bytes:
    """The DER of a pyOpenSSL X509 (as a verify callback gets it), without a BIO round trip in Python.

    `known`: DER by X509 pointer for certificates whose pointers cannot be reused while the
    caller holds them (the port's trust store: OpenSSL hands the store's own objects to the
    verify callback), answered without encoding.
    """
    ptr = cert._x509  # noqa: SLF001
    if known:
        der = known.get(ptr)
        if der is not None:
            return der
    return _x509_der(ptr)


def x509_pointer(cert: Any) -> Any:
    """The X509* of a pyOpenSSL X509 (a key for `certificate_der(known=...)`)."""
    return cert._x509  # noqa: SLF001


def verified_chain_der(connection: SSL.Connection) -> list[bytes] | None:
    """The chain OpenSSL verified for this handshake, leaf to anchor, as DER; None when it did not verify one.

    What `get_verified_chain(as_cryptography=True)` returns, without making a pyOpenSSL
    and a `cryptography` object per certificate: the caller parses only DER it has not seen.
    """
    stack = _lib.SSL_get0_verified_chain(connection_pointer(connection))
    if stack == _ffi.NULL:
        return None
    return [_x509_der(_lib.sk_X509_value(stack, i)) for i in range(_lib.sk_X509_num(stack))]


def peer_certificate_der(connection: SSL.Connection) -> bytes | None:
    """The client's certificate as DER (also on a resumed session); None without one."""
    cert = _lib.SSL_get_peer_certificate(connection_pointer(connection))
    if cert == _ffi.NULL:
        return None
    try:
        return _x509_der(cert)
    finally:
        _lib.X509_free(cert)


def release_bio_buffers(connection: SSL.Connection) -> bool:
    """Give back the memory BIOs' buffers, grown to the size of the handshake's flights.

    OpenSSL's memory BIOs keep their largest size for the connection's life (about
    5 KiB after a mutual-TLS handshake); MODE_RELEASE_BUFFERS does not cover them.
    When both are empty, fresh ones replace them (SSL_set_bio frees the old ones)
    and pyOpenSSL's private references follow.  False, and nothing changed, when
    either holds bytes or the connection has no memory BIOs.
    """
    into, out = getattr(connection, "_into_ssl", None), getattr(connection, "_from_ssl", None)
    if into is None or out is None:
        return False
    # BIO_get_mem_data with a NULL pointer: only the number of bytes held.
    if _lib.BIO_get_mem_data(into, _ffi.NULL) != 0 or _lib.BIO_get_mem_data(out, _ffi.NULL) != 0:
        return False
    global _mem_method
    if _mem_method is None:
        _mem_method = _lib.BIO_s_mem()
    new_into = _lib.BIO_new(_mem_method)
    new_out = _lib.BIO_new(_mem_method)
    if new_into == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_into, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return False
    ssl = connection._ssl  # noqa: SLF001
    _lib.SSL_set_bio(ssl, new_into, new_out)
    connection._into_ssl, connection._from_ssl = new_into, new_out  # noqa: SLF001
    return True


HAS_RAW_CERTIFICATE_ACCESS: bool = all(
    hasattr(_lib, name)
    for name in ("SSL_get0_verified_chain", "sk_X509_num", "sk_X509_value", "i2d_X509_bio", "BIO_get_mem_data",
                 "SSL_get_peer_certificate", "X509_free", "SSL_set_bio")
)  # fmt: skip
