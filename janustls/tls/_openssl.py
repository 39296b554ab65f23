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
    "session_reused",
    "VERIFY_POST_HANDSHAKE",
    "verify_client_post_handshake",
    "watch_client_finished",
    "drive_handshake",
    "certificate_der",
    "verified_chain_der",
    "peer_certificate_der",
    "release_bio_buffers",
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


def _x509_der(x509_ptr: Any) -> bytes:
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new")
    try:
        if _lib.i2d_X509_bio(bio, x509_ptr) != 1:
            raise ValueError("cannot encode a certificate as DER")
        buf = _ffi.new("char**")
        size = _lib.BIO_get_mem_data(bio, buf)
        return _ffi.buffer(buf[0], size)[:]  # type: ignore[no-any-return]
    finally:
        _lib.BIO_free(bio)


def certificate_der(cert: Any) -> bytes:
    """The DER of a pyOpenSSL X509 (as a verify callback gets it), without a BIO round trip in Python."""
    return _x509_der(cert._x509)  # noqa: SLF001


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
    buf = _ffi.new("char**")
    if _lib.BIO_get_mem_data(into, buf) != 0 or _lib.BIO_get_mem_data(out, buf) != 0:
        return False
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_into == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_into, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return False
    _lib.SSL_set_bio(connection_pointer(connection), new_into, new_out)
    connection._into_ssl, connection._from_ssl = new_into, new_out  # noqa: SLF001
    return True


HAS_RAW_CERTIFICATE_ACCESS: bool = all(
    hasattr(_lib, name)
    for name in ("SSL_get0_verified_chain", "sk_X509_num", "sk_X509_value", "i2d_X509_bio", "BIO_get_mem_data",
                 "SSL_get_peer_certificate", "X509_free", "SSL_set_bio")
)  # fmt: skip


# -- TLS session ticket keys (shared by worker processes and machines) ------------------------

#: SSL_CTRL_GET/SET_TLSEXT_TICKET_KEYS and the size of the key block (name 16, HMAC 32, AES 32).
_GET_TICKET_KEYS, _SET_TICKET_KEYS, TICKET_KEYS_SIZE = 58, 59, 80
_ticket_ctrl: Any = None
_ticket_ctrl_checked = False


def _elf_function_symbols(path: str, names: set[str]) -> dict[str, int]:
    """The values of function symbols in an ELF64 file's full symbol table (.symtab)."""
    import mmap
    import struct

    found: dict[str, int] = {}
    wanted = {n.encode() for n in names}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
            return found
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        for sh in sections:
            if sh[1] != 2:  # SHT_SYMTAB
                continue
            offset, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
            strtab = sections[link][4]
            for st_name, st_info, _, _, st_value, _ in struct.iter_unpack("<IBBHQQ", data[offset : offset + size - size % entsize]):
                if st_value and st_info & 0xF == 2:
                    start = strtab + st_name
                    name = data[start : data.find(b"\0", start)]
                    if name in wanted:
                        found[name.decode()] = int(st_value)
                        if len(found) == len(wanted):
                            return found
    return found


#: OpenSSL functions janustls needs that cryptography's extension links in but does not export.
_HIDDEN = frozenset({"SSL_CTX_ctrl", "SSL_CTX_set_session_ticket_cb", "SSL_SESSION_set1_ticket_appdata",
                     "SSL_SESSION_get0_ticket_appdata"})  # fmt: skip
_hidden: dict[str, int] | None = None


def _hidden_functions() -> dict[str, int]:
    """Addresses of the `_HIDDEN` functions in the OpenSSL that pyOpenSSL uses; {} when unsure.

    Neither pyOpenSSL nor cryptography's bindings expose them, and the OpenSSL that
    cryptography bundles is linked into its extension with hidden symbols.  The
    extension ships its full symbol table, so a function's address is the extension's
    load address plus the symbol's value; the load address is checked against an
    exported symbol.  Callers check each function once more by using it on a scratch
    object.
    """
    global _hidden
    if _hidden is None:
        _hidden = {}
        try:
            import ctypes
            import os

            from cryptography.hazmat.bindings import _rust

            path = os.path.realpath(_rust.__file__)
            base = None
            with open("/proc/self/maps") as maps:
                for line in maps:
                    parts = line.split()
                    if len(parts) >= 6 and parts[5] == path and int(parts[2], 16) == 0:
                        base = int(parts[0].split("-")[0], 16)
                        break
            symbols = _elf_function_symbols(path, set(_HIDDEN) | {"PyInit__rust"})
            exported = symbols.get("PyInit__rust")
            if base is not None and exported is not None and \
                    base + exported == ctypes.cast(ctypes.CDLL(path).PyInit__rust, ctypes.c_void_p).value:
                _hidden = {name: base + value for name, value in symbols.items() if name in _HIDDEN}
        except Exception:  # any surprise: the features that need these stay off
            _hidden = {}
    return _hidden


def _find_ticket_ctrl() -> Any:
    """SSL_CTX_ctrl, checked by a set-then-get round trip of ticket keys on a scratch Context; or None."""
    import ctypes

    address = _hidden_functions().get("SSL_CTX_ctrl")
    if address is None:
        return None
    ctrl = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p)(address)
    scratch = SSL.Context(SSL.TLS_SERVER_METHOD)
    pointer = int(_ffi.cast("uintptr_t", scratch._context))  # noqa: SLF001
    probe = bytes(range(TICKET_KEYS_SIZE))
    back = ctypes.create_string_buffer(TICKET_KEYS_SIZE)
    if ctrl(pointer, _SET_TICKET_KEYS, TICKET_KEYS_SIZE, probe) != 1:
        return None
    if ctrl(pointer, _GET_TICKET_KEYS, TICKET_KEYS_SIZE, back) != 1 or back.raw != probe:
        return None
    return ctrl


def ticket_keys_supported() -> bool:
    """Whether `set_ticket_keys` can work here (found and checked once per process)."""
    global _ticket_ctrl, _ticket_ctrl_checked
    if not _ticket_ctrl_checked:
        _ticket_ctrl_checked = True
        try:
            _ticket_ctrl = _find_ticket_ctrl()
        except Exception:  # any surprise: no shared tickets, never a crash
            _ticket_ctrl = None
    return _ticket_ctrl is not None


def set_ticket_keys(context: SSL.Context, keys: bytes) -> bool:
    """Give a Context the session-ticket keys (80 bytes); False if this OpenSSL cannot."""
    if len(keys) != TICKET_KEYS_SIZE:
        raise ValueError(f"ticket keys are {TICKET_KEYS_SIZE} bytes, not {len(keys)}")
    if not ticket_keys_supported():
        return False
    pointer = int(_ffi.cast("uintptr_t", context._context))  # noqa: SLF001
    return bool(_ticket_ctrl(pointer, _SET_TICKET_KEYS, TICKET_KEYS_SIZE, keys) == 1)


def get_ticket_keys(context: SSL.Context) -> bytes | None:
    """A Context's session-ticket keys (tests compare workers' keys), or None."""
    import ctypes

    if not ticket_keys_supported():
        return None
    out = ctypes.create_string_buffer(TICKET_KEYS_SIZE)
    pointer = int(_ffi.cast("uintptr_t", context._context))  # noqa: SLF001
    return out.raw if _ticket_ctrl(pointer, _GET_TICKET_KEYS, TICKET_KEYS_SIZE, out) == 1 else None


# -- the client's chain inside session tickets -----------------------------------------------

#: A resumed session has the client's certificate but not the chain verified for it; a
#: process that never saw that chain (another worker, another machine, a reloaded
#: port) could not name the client's issuers.  The intermediates ride in the ticket
#: (encrypted and authenticated with it) as OpenSSL "ticket app data".
_CHAIN_MAGIC = b"JTLSC1"
_ticket_chain: Any = None  # (set_cb, set_appdata, get_appdata, callback) once resolved


def _ticket_chain_functions() -> Any:
    global _ticket_chain
    if _ticket_chain is None:
        import ctypes

        found = _hidden_functions()
        names = ("SSL_CTX_set_session_ticket_cb", "SSL_SESSION_set1_ticket_appdata", "SSL_SESSION_get0_ticket_appdata")
        if not all(n in found for n in names) or not hasattr(_lib, "SSL_get0_verified_chain"):
            _ticket_chain = False
            return _ticket_chain
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        set_cb = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp, vp, vp)(found[names[0]])
        set_appdata = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp, sz)(found[names[1]])
        get_appdata = ctypes.CFUNCTYPE(ctypes.c_int, vp, ctypes.POINTER(vp), ctypes.POINTER(sz))(found[names[2]])

        def on_new_ticket(ssl_address: int, arg: int) -> int:
            """OpenSSL is making a ticket: put the verified chain's intermediates in it."""
            try:
                ssl = _ffi.cast("SSL *", ssl_address)
                stack = _lib.SSL_get0_verified_chain(ssl)
                if stack != _ffi.NULL and _lib.sk_X509_num(stack) > 2:
                    ders = [_x509_der(_lib.sk_X509_value(stack, i)) for i in range(1, _lib.sk_X509_num(stack) - 1)]
                    data = _CHAIN_MAGIC + b"".join(len(d).to_bytes(4, "big") + d for d in ders)
                    session = _lib.SSL_get_session(ssl)
                    if session != _ffi.NULL:
                        set_appdata(int(_ffi.cast("uintptr_t", session)), data, len(data))
                # A resumed session's new ticket keeps the app data of the one it came from.
            except Exception:  # never let an exception cross into OpenSSL
                pass
            return 1

        callback = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp)(on_new_ticket)
        _ticket_chain = (set_cb, set_appdata, get_appdata, callback)
    return _ticket_chain


def keep_chain_in_tickets(context: SSL.Context) -> bool:
    """Make a Context's session tickets carry the client's intermediates; False if not possible here."""
    functions = _ticket_chain_functions()
    if not functions:
        return False
    set_cb, _, _, callback = functions
    return bool(set_cb(int(_ffi.cast("uintptr_t", context._context)), callback, None, None) == 1)  # noqa: SLF001


def ticket_chain_der(connection: SSL.Connection) -> list[bytes]:
    """The intermediates a resumed session's ticket carried (DER, leaf side first); [] otherwise."""
    import ctypes

    functions = _ticket_chain_functions()
    if not functions:
        return []
    session = _lib.SSL_get_session(connection_pointer(connection))
    if session == _ffi.NULL:
        return []
    data, size = ctypes.c_void_p(), ctypes.c_size_t()
    if functions[2](int(_ffi.cast("uintptr_t", session)), ctypes.byref(data), ctypes.byref(size)) != 1 or not data.value:
        return []
    raw = ctypes.string_at(data.value, size.value)
    if not raw.startswith(_CHAIN_MAGIC):
        return []
    ders, at = [], len(_CHAIN_MAGIC)
    while at + 4 <= len(raw):
        n = int.from_bytes(raw[at : at + 4], "big")
        ders.append(raw[at + 4 : at + 4 + n])
        at += 4 + n
    return ders
