"""Pins the raw OpenSSL access of the per-handshake path (`janustls.tls._openssl`).

`PortTLS.client_chain` reads the verified chain and the peer certificate as DER from
OpenSSL, and `PortTLSProtocol` swaps in fresh memory BIOs after the handshake through
pyOpenSSL's private BIO references.  If an upgrade changes either, this file fails.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from janustls.tls import _hidden, _openssl


def _pair(pki, client_max: int | None = None):
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.use_certificate_chain_file(str(pki.files["server.pem"]))
    server_ctx.use_privatekey_file(str(pki.files["server.key"]))
    server_ctx.load_verify_locations(str(pki.files["root.ca"]))
    server_ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: bool(args[-1]))
    server_ctx.set_session_id(b"janustls-test")
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate_chain_file(str(pki.cert("alice")))
    client_ctx.use_privatekey_file(str(pki.key("alice")))
    if client_max is not None:
        client_ctx.set_max_proto_version(client_max)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    return server, client


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                dst.bio_write(data)
                moved = True


def _handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    for _ in range(10):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(client, server)
    client.send(b"x")
    _pump(client, server)
    assert server.recv(10) == b"x"
    _pump(client, server)


def test_raw_certificate_access_is_available():
    assert _openssl.HAS_RAW_CERTIFICATE_ACCESS


def test_verified_chain_and_peer_certificate_as_der(pki):
    server, client = _pair(pki)
    _handshake(server, client)
    expected = [c.public_bytes(Encoding.DER) for c in server.get_verified_chain(as_cryptography=True)]
    assert _openssl.verified_chain_der(server) == expected
    assert len(expected) == 3  # alice, the intermediate, the root
    assert _openssl.peer_certificate_der(server) == expected[0]
    assert _openssl.peer_certificate_der(SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)) is None


def test_release_bio_buffers_keeps_the_connection_working(pki):
    server, client = _pair(pki)
    _handshake(server, client)
    old = (server._into_ssl, server._from_ssl)  # noqa: SLF001 - the private references it relies on
    assert _openssl.release_bio_buffers(server)
    assert (server._into_ssl, server._from_ssl) != old  # noqa: SLF001
    for n in range(3):
        client.send(b"ping %d" % n)
        _pump(client, server)
        assert server.recv(100) == b"ping %d" % n
        server.send(b"pong %d" % n)
        _pump(client, server)
        assert client.recv(100) == b"pong %d" % n
    # Bytes waiting in a BIO: nothing is swapped.
    client.send(b"pending")
    server.bio_write(client.bio_read(65536))
    assert not _openssl.release_bio_buffers(server)
    assert server.recv(100) == b"pending"


def test_negotiated_names_as_pyopenssl_gives_them(pki):
    """`negotiated` answers what `get_protocol_version_name` and `get_cipher_name` answer
    (it keeps the names by OpenSSL's cipher pointer and version number), on 1.3 and 1.2."""
    for version in (SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION):
        for _ in range(2):  # the second time from the names kept
            server, client = _pair(pki, version)
            _handshake(server, client)
            assert _openssl.negotiated(server) == (server.get_protocol_version_name(), server.get_cipher_name())
    assert _openssl.negotiated(SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None))[1] == ""


def test_drop_client_intermediates_keeps_the_leaf_and_the_connection_working(pki):
    """TLS 1.3: the verified chain keeps the leaf, the peer chain (the intermediate) empties,
    the connection goes on; TLS 1.2 keeps both (its session may be in the session cache)."""
    server, client = _pair(pki)
    _handshake(server, client)
    leaf = _openssl.peer_certificate_der(server)
    assert _hidden.drop_client_intermediates(server) == 3  # intermediate, root; intermediate
    assert _openssl.verified_chain_der(server) == [leaf]
    assert not server.get_peer_cert_chain()
    assert _openssl.peer_certificate_der(server) == leaf
    client.send(b"ping")
    _pump(client, server)
    assert server.recv(100) == b"ping"
    assert _hidden.drop_client_intermediates(server) == 0
    server, client = _pair(pki, client_max=SSL.TLS1_2_VERSION)
    _handshake(server, client)
    assert _hidden.drop_client_intermediates(server) == 0
    assert len(_openssl.verified_chain_der(server) or []) == 3
