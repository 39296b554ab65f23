"""Pins exactly what janustls relies on from private or version-bound OpenSSL behaviour.

If an upgrade of cryptography, pyOpenSSL or Twisted changes one of these, this file
fails, naming the assumption, instead of a production connection.
"""

from __future__ import annotations

import ssl

import pytest
from OpenSSL import SSL, crypto

from janustls.core.clienthello import parse_client_hello
from janustls.tls import _openssl
from tests.support import client_context


def test_post_handshake_auth_is_available():
    assert _openssl.HAS_POST_HANDSHAKE_AUTH
    assert _openssl.VERIFY_POST_HANDSHAKE != 0


def test_verify_error_string():
    assert _openssl.verify_error_string(10) == "certificate has expired"
    assert _openssl.verify_error_string(0) == ""


def test_the_tls_protocol_is_the_app_data(pki):
    """tls.PortTLS.verify finds its per-connection state through the app data, and
    Twisted (which sets app data itself in recent releases) must not replace it."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from janustls.core.config import port_from_options
    from janustls.tls.policy import build_port_tls

    port = port_from_options(
        "P", {"certificate": str(pki.files["server.pem"]), "private_key": str(pki.files["server.key"])}, embedded=True
    )
    factory = TLSMemoryBIOFactory(build_port_tls(port), False, Factory.forProtocol(Protocol))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert _openssl.tls_protocol_of(protocol.getHandle()) is protocol


def test_twisted_tls_protocol_has_the_private_flush():
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    assert callable(getattr(TLSMemoryBIOProtocol, "_flushSendBIO", None))


def _server_context(pki) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server = pki.issued["server"]
    ctx.use_certificate(server.cert)
    for extra in server.intermediates:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(server.key)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(pki.root.cert))
    return ctx


def _pump(server: SSL.Connection, client: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO) -> None:
    """Move bytes between an in-memory pyOpenSSL server and an in-memory stdlib client."""
    for _ in range(10):
        moved = False
        data = c_out.read()
        if data:
            server.bio_write(data)
            moved = True
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            out = server.bio_read(65536)
        except SSL.WantReadError:
            out = b""
        if out:
            c_in.write(out)
            moved = True
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if not moved:
            return


@pytest.mark.parametrize("pha", [True, False])
def test_post_handshake_request_probe(pki, pha):
    """verify_client_post_handshake: True when the client offered it; False, harmlessly, otherwise."""
    server = SSL.Connection(_server_context(pki), None)
    server.set_accept_state()
    cctx = client_context(pki, "alice", tls="1.3", post_handshake_auth=pha)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = c_out.read()
    assert parse_client_hello(hello).post_handshake_auth is pha
    server.bio_write(hello)
    _pump(server, client, c_in, c_out)
    client.do_handshake()
    server.set_verify(SSL.VERIFY_PEER | _openssl.VERIFY_POST_HANDSHAKE)
    seen: list[bool] = []
    _openssl.watch_client_finished(server, lambda: seen.append(True))
    assert _openssl.verify_client_post_handshake(server) is pha
    if not pha:
        return
    try:
        server.do_handshake()
    except SSL.WantReadError:
        pass
    c_in.write(server.bio_read(65536))
    with pytest.raises(ssl.SSLWantReadError):
        client.read(1)  # processes the CertificateRequest and answers it
    server.bio_write(c_out.read())
    with pytest.raises(SSL.WantReadError):
        server.recv(1)
    assert seen, "the info callback did not see 'read finished'"
    assert server.get_peer_certificate(as_cryptography=True) is not None
