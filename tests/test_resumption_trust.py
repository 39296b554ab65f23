"""A resumed session is judged again under the port's current trust.

With shared ticket keys (workers, several machines) a ticket outlives a reload, so a
client revoked since its session was made could otherwise come back by resuming it.
"""

from __future__ import annotations

import os
import socket
import ssl

import pytest

from janustls.pki import CA
from janustls.tls import _hidden, tickets
from tests.support import client_context, definitions, in_reactor, install_handlers, secure_port, start

pytestmark = pytest.mark.skipif(not _hidden.ticket_keys_supported(), reason="no way to set ticket keys here")


@pytest.fixture
def shared_keys(tmp_path):
    key = tmp_path / "ticket.key"
    key.write_bytes(os.urandom(80))
    tickets.configure(key)
    yield
    tickets.configure(None)


def first_line(s: ssl.SSLSocket) -> str:
    return s.makefile("rb").readline().decode().strip()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_revoked_since_the_session_was_made(pki, reactor, procs, events, shared_keys, tmp_path, version):
    root = CA.create("Resumption Root")
    client = root.issue("carol")
    crl = tmp_path / "root.crl"
    crl.write_bytes(root.crl_pem())
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    client.write(tmp_path, "carol")
    install_handlers(procs, h="cn_levels")
    server = start(definitions(procs, secure_port(pki, "RESUME", cas=tmp_path / "root.pem", crl=crl)), procs)
    try:
        ctx = client_context(pki, None, tls=version)
        ctx.load_cert_chain(tmp_path / "carol.pem", tmp_path / "carol.key")
        port = server.port("RESUME")
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
        ) as s:
            assert first_line(s) == "carol 2"
            s.sendall(b"bye\n")
            session = s.session
        # Revoke carol and rebuild the port (what a CRL refresh or a reload does).
        root.revoke(client)
        crl.write_bytes(root.crl_pem())
        from janustls.ops.reload import rebuild_port, replace_port

        in_reactor(lambda: replace_port(server.service, rebuild_port(server.service, "RESUME")))
        mark = events.mark()
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            assert s.session_reused, "the shared ticket key should let the session resume"
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                if not first_line(s):
                    raise ConnectionError("closed")
        e = events.wait_for(mark, "janustls.refused", "RESUME")
        assert e["reason"] == "revoked"
        assert "resumed session" in str(e["refusal"])
    finally:
        server.stop()


def test_session_without_certificate_after_the_port_came_to_require_one(pki, reactor, procs, events, shared_keys):
    """A session from before `client_cert = require` carries no certificate: refused."""
    from janustls.core.config import parse_definitions

    install_handlers(procs, h="cn_levels")

    def text(mode: str) -> str:
        return definitions(procs, secure_port(pki, "COMES", client_cert=mode))

    server = start(text("none"), procs)
    try:
        port = server.port("COMES")
        ctx = client_context(pki, None, tls="1.3")
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
        ) as s:
            assert first_line(s) == "None 0"
            s.sendall(b"bye\n")
            session = s.session
        # The same listen description, now requiring a certificate (a reload keeps the socket).
        new = parse_definitions(text("require"), source="test.ini", base=procs)
        assert in_reactor(lambda: server.service.reload(new)) is True
        mark = events.mark()
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            assert s.session_reused
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                if not first_line(s):
                    raise ConnectionError("closed")
        e = events.wait_for(mark, "janustls.refused", "COMES")
        assert e["reason"] == "no_certificate"
    finally:
        server.stop()


def _strict_port(procs, pki, tmp_path, **keys: object) -> str:
    return definitions(procs, secure_port(pki, "STRICT", cas=tmp_path / "root.pem", **keys))


@pytest.mark.parametrize("change", ["verify_depth", "max_cert_size", "stale_crl"])
def test_resumption_refused_where_a_fresh_handshake_is(pki, reactor, procs, events, shared_keys, tmp_path, change):
    """After a reload that tightens the port's trust, a resumed session is judged like a fresh
    handshake with the same chain: verify_depth, max_cert_size, a stale CRL (crl_expired = refuse)."""
    import datetime

    from janustls.core.config import parse_definitions

    root = CA.create("Strict Root")
    inter = root.intermediate("Strict Intermediate")
    client = inter.issue("dave")
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    client.write(tmp_path, "dave")
    crl = tmp_path / "strict.crl"
    crl.write_bytes(inter.crl_pem())
    install_handlers(procs, h="cn_levels")
    crl_keys = {"crl": crl, "crl_expired": "refuse"} if change == "stale_crl" else {}
    server = start(_strict_port(procs, pki, tmp_path, **crl_keys), procs)
    try:
        ctx = client_context(pki, None, tls="1.3")
        ctx.load_cert_chain(tmp_path / "dave.pem", tmp_path / "dave.key")
        port = server.port("STRICT")
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
        ) as s:
            assert first_line(s) == "dave 3"
            s.sendall(b"bye\n")
            session = s.session
        if change == "verify_depth":
            extra: dict[str, object] = {"verify_depth": 1}
        elif change == "max_cert_size":
            extra = {"max_cert_size": 300}
        else:
            past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
            crl.write_bytes(inter.crl_pem(last_update=past - datetime.timedelta(days=1), next_update=past))
            extra = crl_keys
        new = parse_definitions(_strict_port(procs, pki, tmp_path, **extra), source="test.ini", base=procs)
        assert in_reactor(lambda: server.service.reload(new)) is True
        # A fresh handshake with the same chain is refused ...
        mark = events.mark()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
            ) as s:
                if not first_line(s):
                    raise ConnectionError("closed")
        fresh = events.wait_for(mark, "janustls.refused", "STRICT")
        # ... and so is the resumed session, for the same reason.
        mark = events.mark()
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            assert s.session_reused, "the shared ticket key should let the session resume"
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                if not first_line(s):
                    raise ConnectionError("closed")
        e = events.wait_for(mark, "janustls.refused", "STRICT")
        assert e["reason"] == fresh["reason"]
        assert "resumed session" in str(e["refusal"])
    finally:
        server.stop()
