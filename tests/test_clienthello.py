"""The ClientHello reader (pure): real hellos from Python's ssl, partial data, garbage."""

from __future__ import annotations

import ssl

import pytest

from janustls.core.clienthello import parse_client_hello


def hello(tls: str, pha: bool, sni: str = "localhost") -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.post_handshake_auth = pha
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("pha", [True, False])
def test_tls13_hello(pha):
    h = parse_client_hello(hello("1.3", pha))
    assert h is not None
    assert h.post_handshake_auth is pha
    assert 0x0304 in h.versions
    assert h.server_name == "localhost"
    assert h.secure_renegotiation


def test_tls12_only_hello():
    h = parse_client_hello(hello("1.2", False, sni="example.test"))
    assert h is not None
    assert 0x0304 not in h.versions
    assert h.server_name == "example.test"
    assert h.secure_renegotiation
    assert not h.post_handshake_auth


def test_incomplete_hello_is_none_until_complete():
    data = hello("1.3", True)
    for cut in (1, 5, 9, len(data) // 2, len(data) - 1):
        assert parse_client_hello(data[:cut]) is None
    assert parse_client_hello(data) is not None


def test_hello_split_across_records():
    data = hello("1.3", True)
    body = data[5:]
    first, second = body[:100], body[100:]
    records = (
        b"\x16\x03\x01"
        + len(first).to_bytes(2, "big")
        + first
        + b"\x16\x03\x01"
        + len(second).to_bytes(2, "big")
        + second
    )
    h = parse_client_hello(records)
    assert h is not None and h.post_handshake_auth


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"])
def test_garbage_is_a_value_error(garbage):
    with pytest.raises(ValueError):
        parse_client_hello(garbage)


def test_body_cut_inside_the_cipher_list_is_a_value_error():
    """The handshake header claims 40 bytes; the cipher list inside claims more."""
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x40" + b"\x13\x01" * 2
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message
    with pytest.raises(ValueError):
        parse_client_hello(record)
