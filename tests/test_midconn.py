"""Asking for a client certificate mid-connection: TLS 1.2 renegotiation, TLS 1.3 post-handshake auth.

Real clients only: Python's ssl with and without post_handshake_auth, and openssl s_client.
The handler below answers `ask` by requesting the certificate and reports the outcome
in one line, so each test reads what the application saw.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest

from tests.support import client_context, definitions, install_handlers, secure_port, start, tls_connect


@pytest.fixture(scope="module")
def server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs")
    install_handlers(procs, h="midconn")
    f = pki.files
    s = start(
        definitions(
            procs,
            secure_port(pki, "PLAIN", client_cert="none", crl=f["inter.crl"], request_timeout=1.5),
            secure_port(pki, "ASKS", client_cert="request", crl=f["inter.crl"], request_timeout=1.5),
        ),
        procs,
    )
    yield s
    s.stop()


class Line:
    """A line-oriented TLS client over Python's ssl."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb", buffering=0)

    def say(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.line()

    def line(self) -> str:
        return self.file.readline().decode().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def connect(server, pki, port: str, cert: str | None, version: str, pha: bool = False, session=None) -> Line:
    ctx = client_context(pki, cert, tls=version, post_handshake_auth=pha)
    raw = socket.create_connection(("127.0.0.1", server.port(port)), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    return Line(s)


# version, post_handshake_auth offered by the client
ASKABLE = [("1.2", False), ("1.3", True)]


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_good_certificate_arrives(server, pki, events, version, pha):
    mark = events.mark()
    c = connect(server, pki, "PLAIN", "alice", version, pha)
    assert c.line() == "hello None 0"
    assert c.say("can").startswith("can True")
    assert c.say("ask") == "got alice 3"
    assert events.since(mark, "janustls.request.certificate", "PLAIN")
    # the connection goes on
    assert c.say("after") == "echo after"
    c.close()


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_no_certificate_gives_none_and_connection_goes_on(server, pki, events, version, pha):
    mark = events.mark()
    c = connect(server, pki, "PLAIN", None, version, pha)
    c.line()
    assert c.say("ask") == "got None 0"
    events.wait_for(mark, "janustls.request.no_certificate", "PLAIN")
    assert c.say("still") == "echo still"
    c.close()


@pytest.mark.parametrize("version,pha", ASKABLE)
@pytest.mark.parametrize("cert,reason", [("othera", "unknown_ca"), ("revoked", "revoked"), ("expired", "expired")])
def test_refused_certificate_is_logged_with_its_reason(server, pki, events, version, pha, cert, reason):
    """The port's trust (CAs, CRL) judges the answer exactly as at the handshake."""
    mark = events.mark()
    c = connect(server, pki, "PLAIN", cert, version, pha)
    c.line()
    c.sock.sendall(b"ask\n")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        c.line()
        c.say("more")
    e = events.wait_for(mark, "janustls.request.refused", "PLAIN")
    assert e["reason"] == reason


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_once_per_session(server, pki, events, version, pha):
    """A second request answers from what the first one got, without asking again."""
    c = connect(server, pki, "PLAIN", "alice", version, pha)
    c.line()
    assert c.say("ask") == "got alice 3"
    mark = events.mark()
    assert c.say("ask") == "got alice 3"
    assert c.say("can") == "can True already asked"
    assert not events.since(mark, "janustls.request", "PLAIN")
    c.close()

    c = connect(server, pki, "PLAIN", None, version, pha)
    c.line()
    assert c.say("ask") == "got None 0"
    mark = events.mark()
    assert c.say("ask") == "got None 0"
    assert not events.since(mark, "janustls.request", "PLAIN")
    c.close()


@pytest.mark.parametrize("version,pha", [("1.2", False), ("1.3", True), ("1.3", False)])
def test_port_that_asked_at_handshake_does_not_ask_again(server, pki, events, version, pha):
    mark = events.mark()
    c = connect(server, pki, "ASKS", "alice", version, pha)
    assert c.line() == "hello alice 3"
    assert c.say("ask") == "got alice 3"
    c.close()
    c = connect(server, pki, "ASKS", None, version, pha)
    assert c.line() == "hello None 0"
    assert c.say("ask") == "got None 0"
    c.close()
    assert not events.since(mark, "janustls.request", "ASKS")


def test_tls13_client_without_post_handshake_auth_cannot_be_asked(server, pki, events):
    mark = events.mark()
    c = connect(server, pki, "PLAIN", "alice", "1.3", pha=False)
    c.line()
    assert c.say("can") == "can False the client did not offer post-handshake authentication (TLS 1.3)"
    assert c.say("ask") == "got None 0"
    events.wait_for(mark, "janustls.request.unsupported", "PLAIN")
    assert c.say("usable") == "echo usable"
    c.close()


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_require_without_certificate_closes(server, pki, events, version, pha):
    mark = events.mark()
    c = connect(server, pki, "PLAIN", None, version, pha)
    c.line()
    c.sock.sendall(b"require\n")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        line = c.line()
        assert line == ""  # closed
        raise ConnectionError("closed")
    e = events.wait_for(mark, "janustls.request.refused", "PLAIN")
    assert e["reason"] == "no_certificate"


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_data_sent_during_the_request_is_delivered_in_order(server, pki, version, pha):
    c = connect(server, pki, "PLAIN", "alice", version, pha)
    c.line()
    c.sock.sendall(b"ask\n" + b"".join(b"line%d\n" % i for i in range(50)))
    assert c.line() == "got alice 3"
    assert [c.line() for _ in range(50)] == [f"echo line{i}" for i in range(50)]
    c.close()


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_client_that_never_answers_times_out_and_stays_usable(server, pki, events, version, pha):
    """The client does not read (so never sees the request) until after the timeout."""
    mark = events.mark()
    c = connect(server, pki, "PLAIN", "alice", version, pha)
    c.line()
    c.sock.sendall(b"ask\n")
    # Read nothing for longer than request_timeout (1.5 s): the request stays unanswered.
    time.sleep(2.0)
    events.wait_for(mark, "janustls.request.timeout", "PLAIN")
    assert c.line() == "timeout"
    assert c.say("later") == "echo later"
    c.close()


def test_tls12_client_that_refuses_renegotiation(server, pki, events):
    mark = events.mark()
    ctx = client_context(pki, "alice", tls="1.2")
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    raw = socket.create_connection(("127.0.0.1", server.port("PLAIN")), timeout=5)
    c = Line(ctx.wrap_socket(raw, server_hostname="localhost"))
    c.line()
    c.sock.sendall(b"ask\n")
    try:
        answer = c.line()
    except (ssl.SSLError, ConnectionError):
        answer = "closed"
    found = events.wait_for(mark, "janustls.request", "PLAIN")
    # OpenSSL ends the connection when the client declines (a fatal alert), or the
    # client stays silent and the request times out: either way the caller gets an answer.
    assert found["event_id"] in ("janustls.request.declined", "janustls.request.closed", "janustls.request.timeout")
    assert answer in ("closed", "", "timeout")


# -- resumption ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_resumed_session_keeps_the_handshake_identity(server, pki, events, version):
    ctx = client_context(pki, "alice", tls=version)
    first = Line(tls_connect(server.port("ASKS"), ctx))
    assert first.line() == "hello alice 3"
    first.say("x")  # TLS 1.3: the ticket arrives after the handshake
    session = first.sock.session
    first.close()
    raw = socket.create_connection(("127.0.0.1", server.port("ASKS")), timeout=5)
    again = Line(ctx.wrap_socket(raw, server_hostname="localhost", session=session))
    assert again.sock.session_reused
    assert again.line() == "hello alice 3"
    mark = events.mark()
    assert again.say("ask") == "got alice 3"
    assert not events.since(mark, "janustls.request", "ASKS")
    again.close()


@pytest.mark.parametrize("version,pha", ASKABLE)
def test_session_resumed_after_a_mid_connection_request_starts_without_certificate(server, pki, version, pha):
    """Pinned behaviour: OpenSSL issues no new ticket for the renegotiated (TLS 1.2) or
    post-handshake (TLS 1.3) session, and the bindings lack SSL_new_session_ticket, so
    the client resumes the ticket of its first handshake: no certificate, and it may
    be asked again.  A certificate never leaks into a session that did not verify it."""
    ctx = client_context(pki, "alice", tls=version, post_handshake_auth=pha)
    first = Line(tls_connect(server.port("PLAIN"), ctx))
    first.line()
    assert first.say("x") == "echo x"
    session = first.sock.session
    assert first.say("ask") == "got alice 3"
    first.close()
    raw = socket.create_connection(("127.0.0.1", server.port("PLAIN")), timeout=5)
    again = Line(ctx.wrap_socket(raw, server_hostname="localhost", session=session))
    assert again.sock.session_reused
    assert again.line() == "hello None 0"
    assert again.say("ask") == "got alice 3"
    again.close()


# -- openssl s_client ------------------------------------------------------------------


def s_client(server, pki, args: list[str], script: bytes) -> str:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port('PLAIN')}", "-servername", "localhost",
           "-CAfile", str(pki.files["root.ca"]), "-quiet", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for line in script.split(b"\n"):
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            time.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    return out.decode()


@pytest.mark.parametrize("version_args", [["-tls1_2"], ["-tls1_3", "-enable_pha"]])
def test_openssl_s_client_answers(server, pki, version_args):
    cert = ["-cert", str(pki.cert("alice")), "-cert_chain", str(pki.cert("alice")), "-key", str(pki.key("alice"))]
    out = s_client(server, pki, version_args + cert, b"ask\nafter")
    assert "hello None 0" in out
    assert "got alice 3" in out
    assert "echo after" in out


def test_openssl_s_client_tls13_without_enable_pha(server, pki):
    cert = ["-cert", str(pki.cert("alice")), "-key", str(pki.key("alice"))]
    out = s_client(server, pki, ["-tls1_3", *cert], b"can\nask\nafter")
    assert "can False" in out
    assert "got None 0" in out
    assert "echo after" in out
