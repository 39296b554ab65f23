"""What a client offered in its ClientHello, read from the raw bytes before OpenSSL sees them.

Pure.  OpenSSL keeps "the client offered post-handshake authentication" private, and
only learns of it by failing a request; reading the ClientHello lets a connection
say beforehand whether it can be asked for a certificate mid-connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ClientHello", "parse_client_hello", "MAX_HELLO"]

#: ClientHellos are a few hundred bytes to a few KiB; stop collecting beyond this.
MAX_HELLO = 65536 + 5

EXT_SERVER_NAME = 0
EXT_SUPPORTED_VERSIONS = 43
EXT_POST_HANDSHAKE_AUTH = 49
EXT_RENEGOTIATION_INFO = 0xFF01
SCSV_RENEGOTIATION = 0x00FF


@dataclass(frozen=True)
class ClientHello:
    legacy_version: int
    versions: tuple[int, ...]
    cipher_suites: tuple[int, ...]
    extensions: frozenset[int]
    server_name: str | None

    @property
    def post_handshake_auth(self) -> bool:
        """The client can be asked for a certificate after a TLS 1.3 handshake."""
        return EXT_POST_HANDSHAKE_AUTH in self.extensions

    @property
    def secure_renegotiation(self) -> bool:
        """The client supports RFC 5746, which OpenSSL needs to renegotiate (TLS 1.2)."""
        return EXT_RENEGOTIATION_INFO in self.extensions or SCSV_RENEGOTIATION in self.cipher_suites


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake-protocol payload of the leading TLS records; None if not TLS."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        ctype, _version, length = struct.unpack_from("!BHH", data, pos)
        if ctype != 22:
            return None if pos == 0 else bytes(out)
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            break
    return bytes(out)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the first flight of a TLS client; None while incomplete; ValueError if not a ClientHello."""
    hs = _handshake_bytes(data)
    if hs is None:
        raise ValueError("not a TLS handshake record")
    if len(hs) < 4:
        return None
    if hs[0] != 1:
        raise ValueError("the first handshake message is not a ClientHello")
    length = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + length:
        return None
    body = memoryview(hs)[4 : 4 + length]
    try:
        return _parse_body(body)
    except (IndexError, struct.error) as e:
        raise ValueError(f"malformed ClientHello: {e}") from None


def _parse_body(b: memoryview) -> ClientHello:
    legacy_version = struct.unpack_from("!H", b, 0)[0]
    pos = 2 + 32
    sid_len = b[pos]
    pos += 1 + sid_len
    (cs_len,) = struct.unpack_from("!H", b, pos)
    pos += 2
    suites = tuple(struct.unpack_from(f"!{cs_len // 2}H", b, pos))
    pos += cs_len
    comp_len = b[pos]
    pos += 1 + comp_len
    extensions: set[int] = set()
    versions: tuple[int, ...] = (legacy_version,)
    server_name: str | None = None
    if pos + 2 <= len(b):
        (ext_total,) = struct.unpack_from("!H", b, pos)
        pos += 2
        end = min(len(b), pos + ext_total)
        while pos + 4 <= end:
            etype, elen = struct.unpack_from("!HH", b, pos)
            pos += 4
            payload = b[pos : pos + elen]
            pos += elen
            extensions.add(etype)
            if etype == EXT_SUPPORTED_VERSIONS and elen >= 1:
                n = payload[0] // 2
                versions = tuple(struct.unpack_from(f"!{n}H", payload, 1))
            elif etype == EXT_SERVER_NAME and elen >= 5:
                name_len = struct.unpack_from("!H", payload, 3)[0]
                server_name = bytes(payload[5 : 5 + name_len]).decode("ascii", "replace")
    return ClientHello(legacy_version, versions, suites, frozenset(extensions), server_name)
