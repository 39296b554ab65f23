"""The quarantine: OpenSSL functions that cryptography's extension links in but does not export.

Session ticket keys shared by processes, and the client's chain carried in tickets,
need OpenSSL functions that neither pyOpenSSL nor cryptography's bindings expose.
This module finds them by reading the extension's ELF symbol table and calls them
through ctypes: the riskiest code of janustls, kept apart from `_openssl` (cffi calls
through pyOpenSSL's own bindings).  Everything here is checked on a scratch object
before use, and any surprise turns the feature off instead of failing a connection.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from typing import Any

from OpenSSL import SSL

from janustls.tls._openssl import _ffi, _lib, _x509_der, connection_pointer

try:  # cryptography's compiled extension: where its bundled OpenSSL lives
    from cryptography.hazmat.bindings import _rust
except ImportError:  # another build of cryptography: the features here stay off
    _rust = None  # type: ignore[assignment]  # an optional module: None when absent

__all__ = [
    "TICKET_KEYS_SIZE", "ticket_keys_supported", "set_ticket_keys", "get_ticket_keys",
    "keep_chain_in_tickets", "ticket_chain_der", "drop_client_intermediates",
]  # fmt: skip


# -- TLS session ticket keys (shared by worker processes and machines) ------------------------

#: SSL_CTRL_GET/SET_TLSEXT_TICKET_KEYS and the size of the key block (name 16, HMAC 32, AES 32).
_GET_TICKET_KEYS, _SET_TICKET_KEYS, TICKET_KEYS_SIZE = 58, 59, 80
_ticket_ctrl: Any = None
_ticket_ctrl_checked = False


def _elf_function_symbols(path: str, names: set[str]) -> dict[str, int]:
    """The values of function symbols in an ELF64 file's full symbol table (.symtab)."""
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
            for st_name, st_info, _, _, st_value, _ in struct.iter_unpack(
                "<IBBHQQ", data[offset : offset + size - size % entsize]
            ):
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
                     "SSL_SESSION_get0_ticket_appdata", "OPENSSL_sk_pop"})  # fmt: skip
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
            if _rust is None:
                return _hidden
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
            if (
                base is not None
                and exported is not None
                and base + exported == ctypes.cast(ctypes.CDLL(path).PyInit__rust, ctypes.c_void_p).value
            ):
                _hidden = {name: base + value for name, value in symbols.items() if name in _HIDDEN}
        except Exception:  # any surprise: the features that need these stay off
            _hidden = {}
    return _hidden


def _find_ticket_ctrl() -> Any:
    """SSL_CTX_ctrl, checked by a set-then-get round trip of ticket keys on a scratch Context; or None."""
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
    functions = _ticket_chain_functions()
    if not functions:
        return []
    session = _lib.SSL_get_session(connection_pointer(connection))
    if session == _ffi.NULL:
        return []
    data, size = ctypes.c_void_p(), ctypes.c_size_t()
    if (
        functions[2](int(_ffi.cast("uintptr_t", session)), ctypes.byref(data), ctypes.byref(size)) != 1
        or not data.value
    ):
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


# -- the client's intermediates, once the connection's chain is in Python ----------------------

#: OPENSSL_sk_pop (a cffi function pointer: a call costs what a binding's call costs) once found
#: and checked; False when not usable here.
_stack_pop: Any = None


def _stack_pop_function() -> Any:
    """OPENSSL_sk_pop, checked on a scratch stack of two certificates; False when unsure."""
    global _stack_pop
    if _stack_pop is None:
        _stack_pop = False
        try:
            address = _hidden_functions().get("OPENSSL_sk_pop")
            if address is None or not all(
                hasattr(_lib, n) for n in ("sk_X509_new_null", "sk_X509_push", "sk_X509_free", "X509_new", "X509_free")
            ):
                return _stack_pop
            pop = _ffi.cast("void *(*)(void *)", address)
            stack, first, second = _lib.sk_X509_new_null(), _lib.X509_new(), _lib.X509_new()
            try:
                _lib.sk_X509_push(stack, first)
                _lib.sk_X509_push(stack, second)
                if pop(stack) == second and _lib.sk_X509_num(stack) == 1:
                    _stack_pop = pop
            finally:
                _lib.sk_X509_free(stack)
                _lib.X509_free(first)
                _lib.X509_free(second)
        except Exception:  # any surprise: OpenSSL keeps the intermediates, as it would anyway
            _stack_pop = False
    return _stack_pop


def drop_client_intermediates(connection: SSL.Connection) -> int:
    """Let OpenSSL free its parsed copies of the client's intermediates after a TLS 1.3 handshake.

    OpenSSL keeps each certificate the client sent, parsed (about 4 KiB each, public
    key decoded), in the session's peer chain and the verified chain for the
    connection's life.  janustls reads the chain once, at the handshake
    (`TLSPolicy.client_chain`, shared per identity), and needs only the leaf after
    (`SSL_get_peer_certificate`, kept): both stacks keep their leaf side and lose the
    rest.  A TLS 1.3 session is not shared with a session cache (stateless tickets,
    already sent; a ticket carries the leaf alone); a post-handshake certificate
    request replaces both stacks.  Other versions keep theirs.  The number of
    certificate references given back.
    """
    pop = _stack_pop or _stack_pop_function()
    if not pop:
        return 0
    ssl = connection_pointer(connection)
    sent = _lib.SSL_get_peer_cert_chain(ssl)  # the server's peer chain does not hold the leaf
    if sent == _ffi.NULL:
        return 0
    intermediates = _lib.sk_X509_num(sent)
    if intermediates <= 0 or _lib.SSL_version(ssl) != _lib.TLS1_3_VERSION:
        return 0  # nothing parsed beside the leaf (the anchor is the store's own), or not TLS 1.3
    dropped = 0
    verified = _lib.SSL_get0_verified_chain(ssl)  # leaf first, then what it was verified through
    if verified != _ffi.NULL:
        for _ in range(_lib.sk_X509_num(verified) - 1):
            _lib.X509_free(pop(verified))
            dropped += 1
    for _ in range(intermediates):
        _lib.X509_free(pop(sent))
        dropped += 1
    return dropped
