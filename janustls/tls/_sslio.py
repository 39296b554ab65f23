"""A TLS connection's memory-BIO traffic in direct OpenSSL calls, for the per-record path.

pyOpenSSL allocates a fresh 32 KiB buffer for every `recv` and `bio_read`, and reports
"nothing there yet", the usual outcome of a read, by raising `WantReadError`: a Python
exception each time.  A connection makes several such reads per handshake and per
exchange.  These functions read into one buffer per process and return OpenSSL's result
as a number: the bytes are copied out before the function returns, and all of this runs
in the reactor thread.  "Want read", the client's close_notify and a stream that ended
without one are told apart here; any other outcome goes back to pyOpenSSL (`raise_for`),
which raises the exception it always raised for it.

pyOpenSSL's private names used here (`Connection._ssl`, `_into_ssl`, `_from_ssl`,
`_raise_ssl_error`, `_handle_bio_errors`) are pinned by `tests/test_sslio.py`.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

__all__ = [
    "READ_SIZE",
    "WANT_READ",
    "ZERO_RETURN",
    "feed",
    "handshake_step",
    "raise_for",
    "read",
    "take_output",
    "ended_without_close_notify",
    "error_of",
    "write",
]

_lib: Any = Binding.lib
_ffi: Any = Binding.ffi

#: OpenSSL's "want read": the connection needs more bytes from the client before it can go on.
WANT_READ: int = _lib.SSL_ERROR_WANT_READ
#: OpenSSL's "zero return": the client's close_notify (it sends nothing more).
ZERO_RETURN: int = _lib.SSL_ERROR_ZERO_RETURN
_SSL_ERROR: int = _lib.SSL_ERROR_SSL
#: The reason OpenSSL 3 and later give for a stream that ended without close_notify (None
#: when these bindings do not say it: such an end then goes through pyOpenSSL, as others).
_EOF_REASON: int | None = (
    _lib.SSL_R_UNEXPECTED_EOF_WHILE_READING
    if getattr(_lib, "Cryptography_HAS_UNEXPECTED_EOF_WHILE_READING", 0)
    else None
)
#: Application bytes taken per read (what Twisted asks for), and encrypted bytes per BIO read.
READ_SIZE = 2**15
_BIO_CHUNK = 2**16
#: The buffers every read goes through (the reactor thread's own: copied out at once).
_read_buffer: Any = _ffi.new("char[]", READ_SIZE)
_bio_buffer: Any = _ffi.new("char[]", _BIO_CHUNK)


def feed(connection: SSL.Connection, data: bytes) -> None:
    """Give OpenSSL bytes received from the client (the connection's receive BIO)."""
    if type(data) is not bytes:
        data = bytes(data)  # a bytearray or memoryview (pyOpenSSL took any buffer): cffi takes bytes only
    result = _lib.BIO_write(connection._into_ssl, data, len(data))  # noqa: SLF001
    if result <= 0:  # out of memory, or not a memory BIO: pyOpenSSL's own error
        connection._handle_bio_errors(connection._into_ssl, result)  # noqa: SLF001


def take_output(connection: SSL.Connection) -> bytes:
    """What OpenSSL has written for the client (the send BIO), emptied; b"" when nothing."""
    bio = connection._from_ssl  # noqa: SLF001
    n = _lib.BIO_read(bio, _bio_buffer, _BIO_CHUNK)
    if n <= 0:
        return b""
    data: bytes = _ffi.buffer(_bio_buffer, n)[:]
    while n == _BIO_CHUNK:
        n = _lib.BIO_read(bio, _bio_buffer, _BIO_CHUNK)
        if n > 0:
            data += _ffi.buffer(_bio_buffer, n)[:]
    return data


def read(connection: SSL.Connection) -> bytes | int:
    """Up to READ_SIZE application bytes, or SSL_read's result (0 or less) when it has none."""
    n: int = _lib.SSL_read(connection._ssl, _read_buffer, READ_SIZE)  # noqa: SLF001
    if n > 0:
        data: bytes = _ffi.buffer(_read_buffer, n)[:]
        return data
    return n


def write(connection: SSL.Connection, data: bytes) -> int:
    """SSL_write of `data` (bytes, at most one record's worth): its result."""
    result: int = _lib.SSL_write(connection._ssl, data, len(data))  # noqa: SLF001
    return result


def handshake_step(connection: SSL.Connection) -> int:
    """SSL_do_handshake: 1 when the handshake is done, else its result."""
    result: int = _lib.SSL_do_handshake(connection._ssl)  # noqa: SLF001
    return result


def error_of(connection: SSL.Connection, result: int) -> int:
    """SSL_get_error for a call that returned `result`: WANT_READ when it only waits for
    more bytes from the client, ZERO_RETURN after the client's close_notify."""
    error: int = _lib.SSL_get_error(connection._ssl, result)  # noqa: SLF001
    return error


def ended_without_close_notify(error: int) -> bool:
    """Whether a read's `error` (`error_of`) is the client's stream ending without a
    close_notify; OpenSSL's error queue is cleared then, as pyOpenSSL clears it before it
    raises its SysCallError("Unexpected EOF") for the same outcome."""
    if error != _SSL_ERROR or _EOF_REASON is None or _lib.ERR_GET_REASON(_lib.ERR_peek_error()) != _EOF_REASON:
        return False
    _lib.ERR_clear_error()
    return True


def raise_for(connection: SSL.Connection, result: int) -> None:
    """Raise what pyOpenSSL raises for a call that returned `result`.

    That includes a Python exception a callback raised during the call (pyOpenSSL keeps it
    and raises it here) and the ZeroReturnError of a close_notify.
    """
    connection._raise_ssl_error(connection._ssl, result)  # noqa: SLF001
    raise SSL.Error([("janustls", "_sslio", f"OpenSSL call failed with result {result} and no error")])
