"""What OpenSSL keeps for an idle connection once the handshake is over.

The client's chain is read into Python at the handshake (shared per identity); OpenSSL's
own parsed copies of the client's intermediates (about 4 KiB each, for the connection's
life) are given back after a TLS 1.3 handshake, while the certificate fields stay
readable at every level.  Real ports on 127.0.0.1:0 and Python's ssl as the client.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificates

from janustls.tls import _hidden, _openssl
from tests.support import client_context, definitions, handed, in_reactor, install_handlers, secure_port, start

HANDLER = """\
from tests.support import hand_over


async def keep(sock):
    hand_over(sock)
    sock.write(b"ok\\n")
    while await sock.readline():
        fields = [sock.cert_info("CN", level) or "-" for level in range(sock.cert_levels())]
        sock.write((" ".join(fields) + "\\n").encode())
"""


@pytest.fixture(scope="module")
def server(pki: Any, reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    procs = install_handlers(tmp_path_factory.mktemp("procs_connmem"))
    (procs / "m.py").write_text(HANDLER)
    s = start(definitions(procs, secure_port(pki, "KEEP", handler="m:keep")), procs)
    yield s
    s.stop()


def _chains(conn: Any) -> tuple[int, list[bytes] | None, bytes | None]:
    """In the reactor: the peer chain's length, the verified chain and the peer certificate OpenSSL holds."""
    handle = conn._protocol.transport.getHandle()  # noqa: SLF001 - the connection's own TLS handle
    stack = _openssl._lib.SSL_get_peer_cert_chain(_openssl.connection_pointer(handle))  # noqa: SLF001
    peer_chain = -1 if stack == _openssl._ffi.NULL else _openssl._lib.sk_X509_num(stack)  # noqa: SLF001
    return peer_chain, _openssl.verified_chain_der(handle), _openssl.peer_certificate_der(handle)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_openssl_keeps_only_the_leaf_after_a_tls13_handshake(server: Any, pki: Any, version: str) -> None:
    sent = load_pem_x509_certificates(pki.cert("alice").read_bytes())
    assert len(sent) == 2  # alice and the intermediate: two certificates OpenSSL parses
    leaf = sent[0].public_bytes(Encoding.DER)
    raw = socket.create_connection(("127.0.0.1", server.port("KEEP")), timeout=5)
    ctx = client_context(pki, "alice", tls=version)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        f = s.makefile("rb")
        assert f.readline() == b"ok\n"
        peer_chain, verified, peer = in_reactor(_chains, handed())
        assert peer == leaf  # the client's certificate stays (refusal logs, a resumed session's leaf)
        if version == "1.3":
            assert (peer_chain, verified) == (0, [leaf])
        else:  # a TLS 1.2 session may be shared with the session cache: left as OpenSSL made it
            assert peer_chain == 1 and verified is not None and len(verified) == 3
        s.sendall(b"who\n")
        assert f.readline() == b"alice Test Intermediate CA Test Root CA\n"  # every level, from Python
        s.sendall(b"again\n")
        assert f.readline() == b"alice Test Intermediate CA Test Root CA\n"


def test_stack_pop_is_found_and_checked() -> None:
    """The one hidden function the trimming needs, checked on a scratch stack (an upgrade that
    hides it turns the trimming off; this test says so)."""
    assert _hidden._stack_pop_function()  # noqa: SLF001
