"""The PROXY protocol (HAProxy's proxy-protocol.txt), versions 1 and 2: pure, no I/O.

Two directions:

- Outgoing (proxy ports with `forward_identity = proxy-v2`): `build_v2` makes the binary
  header a backend reads first, with the client's address and, in a `PP2_TYPE_SSL` TLV,
  the TLS facts and the verified client certificate, in the layout HAProxy and
  ghostunnel use, so backends written for them read janustls unchanged.
- Incoming (`proxy_protocol = yes` on any port): `HeaderReader` accepts a v1 or v2
  header fed in pieces of any size, as a load balancer in TCP mode sends it, and says
  precisely what is wrong when it is not one.

`parse_v2` decodes a whole v2 header including its TLVs (tests and backends use it).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "authority_from_sni",
    "V2_SIGNATURE",
    "V1_MAX_LENGTH",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_SSL",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_SUBTYPE_SSL_CLIENT_CERT",
    "PP2_CLIENT_SSL",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "VERIFY_NO_CERTIFICATE",
    "ProxyHeaderError",
    "SSLInfo",
    "ProxyHeader",
    "build_v2",
    "build_v1",
    "parse_v1",
    "parse_v2",
    "parse_ssl_tlv",
    "HeaderReader",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 line the spec allows, CRLF included.
V1_MAX_LENGTH = 107
#: A v2 header's address block and TLVs fit a 16-bit length.
V2_MAX_PAYLOAD = 0xFFFF

# TLV types (section 2.2 of proxy-protocol.txt).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
#: The DER client certificate: HAProxy's PP2_SUBTYPE_SSL_CLIENT_CERT, as ghostunnel sends it.
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_TYPE_NETNS = 0x30

# Bits of the PP2_TYPE_SSL `client` field.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

#: The `verify` value sent when the client presented no certificate: the spec wants
#: zero only for "presented and verified" (1 is X509_V_ERR_UNSPECIFIED).
VERIFY_NO_CERTIFICATE = 1

_CMD_LOCAL = 0x20
_CMD_PROXY = 0x21
_AF_UNSPEC = 0x00
_TCP4 = 0x11
_TCP6 = 0x21
_UNIX_STREAM = 0x31
_ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


class ProxyHeaderError(ValueError):
    """A PROXY header that is missing, malformed, or of an unsupported kind; the text says which."""


@dataclass(frozen=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: what the TLS-terminating side knew about the client."""

    client: int = PP2_CLIENT_SSL
    verify: int = VERIFY_NO_CERTIFICATE
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    client_cert: bytes | None = None
    #: Sub-TLVs this module does not name, as (type, value).
    other: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class ProxyHeader:
    """A decoded PROXY header.

    `source`/`destination` are (host, port) or None when the header carries no
    addresses (v2 LOCAL, v1 UNKNOWN, AF_UNSPEC): the receiver then uses the real ones.
    """

    version: int
    local: bool
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int
    tlvs: tuple[tuple[int, bytes], ...] = ()
    ssl: SSLInfo | None = None
    unix: tuple[str, str] | None = None

    def tlv(self, kind: int) -> bytes | None:
        for t, v in self.tlvs:
            if t == kind:
                return v
        return None


# -- building -----------------------------------------------------------------------------


_LABEL = re.compile(rb"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def authority_from_sni(name: bytes | None) -> tuple[bytes | None, str | None]:
    """The PP2_TYPE_AUTHORITY value for a client's SNI name: (value, None), or (None, why not).

    The client chooses these bytes freely; only an ASCII host name (labels of 1 to 63
    letters, digits, `-` or `_`, at most 253 characters; a trailing dot is dropped) is
    passed on.  This never raises: anything else is reported, not forwarded.
    """
    if not name:
        return None, None
    host = name[:-1] if name.endswith(b".") else name
    if len(host) > 253:
        return None, f"server name of {len(name)} bytes is longer than a host name (253)"
    for label in host.split(b"."):
        if not _LABEL.fullmatch(label):
            shown = label[:70].decode("ascii", "backslashreplace")
            return None, f"server name label {shown!r} is not a host name label (1 to 63 ASCII letters, digits, - or _)"
    return host, None


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{kind:02x} is {len(value)} bytes; at most 65535 fit")
    return struct.pack("!BH", kind, len(value)) + value


def _ssl_tlv(ssl: SSLInfo, room: int) -> bytes:
    """The PP2_TYPE_SSL TLV; the certificate is left out when it would not fit in `room`."""
    body = struct.pack("!BI", ssl.client, ssl.verify)
    for kind, text in (
        (PP2_SUBTYPE_SSL_VERSION, ssl.version),
        (PP2_SUBTYPE_SSL_CN, ssl.cn),
        (PP2_SUBTYPE_SSL_CIPHER, ssl.cipher),
        (PP2_SUBTYPE_SSL_SIG_ALG, ssl.sig_alg),
        (PP2_SUBTYPE_SSL_KEY_ALG, ssl.key_alg),
    ):
        if text:
            body += _tlv(kind, text.encode("utf-8"))
    for kind, value in ssl.other:
        body += _tlv(kind, value)
    if ssl.client_cert and 3 + len(body) + 3 + len(ssl.client_cert) <= room:
        body += _tlv(PP2_SUBTYPE_SSL_CLIENT_CERT, ssl.client_cert)
    return _tlv(PP2_TYPE_SSL, body)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def build_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    ssl: SSLInfo | None = None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A v2 PROXY header (command PROXY) for a TCP connection from `source` to `destination`.

    Mixed families are sent as IPv6 with the IPv4 address mapped (::ffff:a.b.c.d); a
    non-IP address gives AF_UNSPEC, which tells the backend to use the real addresses.
    The client certificate is dropped, never the header, if everything would not fit
    the 64 KiB the length field allows.
    """
    src = _ip(source[0]) if source else None
    dst = _ip(destination[0]) if destination else None
    if src is None or dst is None or source is None or destination is None:
        family, addresses = _AF_UNSPEC, b""
    elif src.version == 4 and dst.version == 4:
        family = _TCP4
        addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    else:
        s6 = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        d6 = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
        family = _TCP6
        addresses = s6.packed + d6.packed + struct.pack("!HH", source[1], destination[1])
    rest = b"".join(_tlv(k, v) for k, v in tlvs)
    payload = addresses + rest
    if ssl is not None:
        payload += _ssl_tlv(ssl, V2_MAX_PAYLOAD - len(payload))
    if len(payload) > V2_MAX_PAYLOAD:
        raise ValueError(f"a PROXY v2 header holds at most {V2_MAX_PAYLOAD} bytes after its first 16")
    return V2_SIGNATURE + struct.pack("!BBH", _CMD_PROXY, family, len(payload)) + payload


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 PROXY line (tests, and backends that only read v1)."""
    src = _ip(source[0]) if source else None
    dst = _ip(destination[0]) if destination else None
    if src is None or dst is None or source is None or destination is None or src.version != dst.version:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


# -- parsing ------------------------------------------------------------------------------


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyHeaderError(f"v1 header: {text[:8]!r} is not a port number")
    return int(text)


def parse_v1(line: bytes) -> ProxyHeader:
    """One whole v1 line, CRLF included."""
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n"):
        raise ProxyHeaderError("v1 header: not a 'PROXY ... CRLF' line")
    parts = line[:-2].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, False, None, None, len(line))
    if len(parts) != 6:
        raise ProxyHeaderError(f"v1 header: expected 6 fields, got {len(parts)}")
    _, proto, src, dst, sport, dport = parts
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"v1 header: unknown protocol {proto[:8]!r}")
    want = 4 if proto == b"TCP4" else 6
    hosts = []
    for raw in (src, dst):
        try:
            addr = ipaddress.ip_address(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise ProxyHeaderError(f"v1 header: {raw[:40]!r} is not an IP address") from None
        if addr.version != want:
            raise ProxyHeaderError(f"v1 header: {addr} is not an IPv{want} address ({proto.decode()})")
        hosts.append(str(addr))
    return ProxyHeader(1, False, (hosts[0], _port(sport)), (hosts[1], _port(dport)), len(line))


def _tlvs(data: bytes, where: str) -> tuple[tuple[int, bytes], ...]:
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise ProxyHeaderError(f"{where}: {len(data) - i} stray bytes after the last TLV")
        kind, size = struct.unpack_from("!BH", data, i)
        if i + 3 + size > len(data):
            raise ProxyHeaderError(f"{where}: TLV 0x{kind:02x} claims {size} bytes, {len(data) - i - 3} remain")
        out.append((kind, bytes(data[i + 3 : i + 3 + size])))
        i += 3 + size
    return tuple(out)


def parse_ssl_tlv(value: bytes) -> SSLInfo:
    """The value of a PP2_TYPE_SSL TLV."""
    if len(value) < 5:
        raise ProxyHeaderError(f"PP2_TYPE_SSL: {len(value)} bytes, at least 5 needed")
    client, verify = struct.unpack_from("!BI", value)
    fields: dict[str, str | bytes | None] = {}
    other = []
    names = {
        PP2_SUBTYPE_SSL_VERSION: "version",
        PP2_SUBTYPE_SSL_CN: "cn",
        PP2_SUBTYPE_SSL_CIPHER: "cipher",
        PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
        PP2_SUBTYPE_SSL_KEY_ALG: "key_alg",
    }
    for kind, sub in _tlvs(value[5:], "PP2_TYPE_SSL"):
        if kind in names:
            fields[names[kind]] = sub.decode("utf-8", "replace")
        elif kind == PP2_SUBTYPE_SSL_CLIENT_CERT:
            fields["client_cert"] = sub
        else:
            other.append((kind, sub))
    return SSLInfo(client=client, verify=verify, other=tuple(other), **fields)  # type: ignore[arg-type]  # the str fields, keyed by their names


def parse_v2(header: bytes) -> ProxyHeader:
    """One whole v2 header (16 bytes plus its stated length)."""
    if len(header) < 16 or header[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("v2 header: bad signature")
    ver_cmd, fam, size = struct.unpack_from("!BBH", header, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 header: version {ver_cmd >> 4}, expected 2")
    if ver_cmd & 0x0F not in (0, 1):
        raise ProxyHeaderError(f"v2 header: unknown command {ver_cmd & 0x0F}")
    if len(header) != 16 + size:
        raise ProxyHeaderError(f"v2 header: {len(header) - 16} bytes after the first 16, length says {size}")
    body = header[16:]
    local = ver_cmd & 0x0F == 0
    need = _ADDRESS_SIZES.get(fam, 0)
    if fam >> 4 > 3 or fam & 0x0F > 2:
        raise ProxyHeaderError(f"v2 header: unknown address family/protocol 0x{fam:02x}")
    if size < need:
        raise ProxyHeaderError(f"v2 header: family 0x{fam:02x} needs {need} address bytes, length is {size}")
    source = destination = None
    unix = None
    if fam in (0x11, 0x12):
        s, d, sp, dp = struct.unpack_from("!4s4sHH", body)
        source, destination = (str(ipaddress.IPv4Address(s)), sp), (str(ipaddress.IPv4Address(d)), dp)
    elif fam in (0x21, 0x22):
        s, d, sp, dp = struct.unpack_from("!16s16sHH", body)
        source, destination = (str(ipaddress.IPv6Address(s)), sp), (str(ipaddress.IPv6Address(d)), dp)
    elif fam in (0x31, 0x32):
        s, d = struct.unpack_from("!108s108s", body)
        unix = (s.split(b"\0", 1)[0].decode("utf-8", "replace"), d.split(b"\0", 1)[0].decode("utf-8", "replace"))
    if local or fam & 0x0F != 1:  # LOCAL, or not a stream: use the real addresses
        source = destination = None
    tlvs = _tlvs(body[need:], "v2 header")
    ssl = None
    for kind, value in tlvs:
        if kind == PP2_TYPE_SSL:
            ssl = parse_ssl_tlv(value)
    return ProxyHeader(2, local, source, destination, len(header), tlvs, ssl, unix)


class HeaderReader:
    """Reads the PROXY header at the start of a stream, fed in pieces of any size.

    `feed` returns None while more bytes are needed, then `(header, rest)` once, where
    `rest` is what followed the header (the TLS ClientHello).  It raises
    ProxyHeaderError as soon as the bytes cannot be a header (the first byte of a
    TLS ClientHello already cannot), so a client that connects without one is
    refused at once instead of waiting for a timeout.
    """

    def __init__(self, max_v2_payload: int = V2_MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max_v2 = max_v2_payload
        self.done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        if self.done:
            raise RuntimeError("the header has already been read")
        self._buffer += data
        buf = self._buffer
        head = bytes(buf[:12])
        if V2_SIGNATURE.startswith(head):
            if len(buf) < 16:
                return None
            size = struct.unpack_from("!H", buf, 14)[0]
            if buf[12] >> 4 != 2:
                raise ProxyHeaderError(f"v2 header: version {buf[12] >> 4}, expected 2")
            if size > self._max_v2:
                raise ProxyHeaderError(
                    f"v2 header: {size} bytes of addresses and TLVs, at most {self._max_v2} accepted"
                )
            if len(buf) < 16 + size:
                return None
            header = parse_v2(bytes(buf[: 16 + size]))
            rest = bytes(buf[16 + size :])
        elif V1_PREFIX.startswith(bytes(buf[:6])):
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) >= V1_MAX_LENGTH or b"\n" in buf:
                    raise ProxyHeaderError(f"v1 header: no CRLF within {V1_MAX_LENGTH} bytes")
                return None
            if end + 2 > V1_MAX_LENGTH:
                raise ProxyHeaderError(f"v1 header: {end + 2} bytes, at most {V1_MAX_LENGTH}")
            header = parse_v1(bytes(buf[: end + 2]))
            rest = bytes(buf[end + 2 :])
        else:
            first = buf[:1]
            what = "a TLS handshake" if first == b"\x16" else f"{bytes(buf[:8])!r}"
            raise ProxyHeaderError(f"no PROXY header: the connection starts with {what}")
        self.done = True
        self._buffer = bytearray()
        return header, rest
