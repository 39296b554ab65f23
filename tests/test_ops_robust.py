"""Robustness of the operator's path: listen values `check` must judge (port ranges, every
Twisted endpoint type), an SNI name no PROXY header can carry, handler modules and status
listeners across reloads."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from janustls.cli import main
from tests.support import client_context, definitions, free_port, in_reactor, port_section, start, status_section
from tests.test_proxy import Backend, decode_v2, echo, gate, recv_exactly, servers  # noqa: F401  (fixture)


@pytest.fixture
def checked(pki, procs, capsys):
    (procs / "h.py").write_text("def serve(sock):\n    sock.write(b'hi')\n")

    def run(listen: str, extra: str = "") -> tuple[int, str, str]:
        ini = procs / "p.ini"
        ini.write_text(definitions(procs, port_section(pki, "A", listen=listen, handler="h:serve"), extra))
        code = main(["check", str(ini)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.mark.parametrize(
    "listen", ["tcp:99999", "tcp:65536:interface=127.0.0.1", "tcp:-1", "tcp6:port=70000", "tcp:port=abc"]
)
def test_check_refuses_port_numbers_out_of_range(checked, listen):
    code, out, err = checked(listen)
    assert code == 1, out
    assert "p.ini: [port:A] listen:" in err and "0 to 65535" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("listen", ["tcp:99999", "tcp:70000:interface=127.0.0.1"])
def test_check_refuses_status_port_out_of_range(checked, listen):
    code, _out, err = checked("tcp:0:interface=127.0.0.1", f"[status]\nlisten = {listen}\n")
    assert code == 1 and "[status] listen:" in err and "0 to 65535" in err, err


@pytest.mark.parametrize(
    "listen",
    [
        "systemd:domain=INET:index=0",
        "systemd:domain=INET6:name=janustls.socket",
        "unix:/tmp/janustls-check-test.sock",
        r"tcp6:0:interface=\:\:1",
        "tcp:0:interface=127.0.0.1:backlog=10",
    ],
)
def test_check_accepts_every_endpoint_type(checked, listen):
    """Endpoints whose socket exists only at start (systemd) are checked for syntax, not used."""
    code, out, err = checked(listen)
    assert code == 0, err
    assert "Traceback" not in err and out.rstrip().endswith("OK")


@pytest.mark.parametrize(
    "listen, words",
    [
        ("systemd:domain=INET", "index= or name="),
        ("systemd:domain=SCTP:index=0", "domain"),
        ("ssl:0:privateKey=nothing.pem", "listen"),
        ("bogus:1", "Unknown endpoint type"),
    ],
)
def test_check_locates_bad_endpoints_without_traceback(checked, listen, words):
    code, _out, err = checked(listen)
    assert code == 1
    assert "p.ini: [port:A] listen:" in err and words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_check_turns_unexpected_errors_into_one_line(checked, monkeypatch):
    """Whatever goes wrong inside `check` is one line on stderr and exit 1, never a traceback."""
    import janustls.cli

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something\nunforeseen")

    monkeypatch.setattr(janustls.cli, "build_ports", broken)
    code, _out, err = checked("tcp:0:interface=127.0.0.1")
    assert code == 1 and err.count("\n") == 1 and "RuntimeError" in err and "something unforeseen" in err, err


def read_line_within(stream: Any, seconds: float) -> bytes:
    """A line from a pipe, or b"" when none comes within `seconds` (the server dropped the client)."""
    import threading

    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    t.start()
    t.join(seconds)
    return out[0] if out else b""


# -- SNI on proxy-v2 ports --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a" * 64 + ".example", "bad..name", "b\u00e4d.example", ".".join(["x" * 62] * 4) + ".abc"]
)
def test_bad_sni_on_proxy_v2_port_is_forwarded_without_authority(servers, pki, procs, events, name):
    """openssl sends any server name; one that is no DNS name cannot become PP2_TYPE_AUTHORITY,
    so the header goes without it, the client is served, and the server says so."""
    backend = Backend(echo, header=True)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}", forward_identity="proxy-v2")
    mark = events.mark()
    port = server.port("GATE")
    f = pki.files
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-CAfile", str(f["root.ca"]),
         "-cert", str(f["alice.pem"]), "-cert_chain", str(f["alice.pem"]), "-key", str(f["alice.key"]), "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hello\n")
        client.stdin.flush()
        got = read_line_within(client.stdout, 15)
        assert got == b"HELLO\n", got
    finally:
        client.kill()
        client.communicate()
    [record] = backend.wait(1)
    assert record["data"] == b"hello\n"
    h = decode_v2(record["header"])
    assert 0x02 not in h["tlvs"] and h["ssl"]["subs"][0x22] == b"alice"
    e = events.wait_for(mark, "janustls.proxy.bad_server_name", "GATE")
    assert e["detail"]
    assert not events.since(mark, "janustls.handler.error") and not [x for x in events.since(mark) if x.get("isError")]


# -- reloads ------------------------------------------------------------------------------------


def test_reload_loads_changed_handler_modules(pki, procs, events):
    (procs / "h.py").write_text("def serve(sock):\n    sock.write(b'one\\n')\n")
    (procs / "helper.py").write_text("WORD = b'first'\n")
    (procs / "g.py").write_text("import helper\ndef serve(sock):\n    sock.write(helper.WORD + b'\\n')\n")
    ini = procs / "p.ini"
    text = definitions(procs, port_section(pki, "A", handler="h:serve"), port_section(pki, "B", handler="g:serve"))
    ini.write_text(text)
    from janustls.core.config import load_definitions
    from tests.support import Server

    s = Server(load_definitions(ini))
    try:
        ctx = client_context(pki, None, tls="1.3")

        def say(name: str) -> bytes:
            with ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", s.port(name)), timeout=5), server_hostname="localhost"
            ) as c:
                return c.recv(100)

        assert say("A") == b"one\n" and say("B") == b"first\n"
        (procs / "h.py").write_text("def serve(sock):\n    sock.write(b'two\\n')\n")
        (procs / "helper.py").write_text("WORD = b'second'\n")
        assert in_reactor(lambda: s.service.reload()) is True
        assert say("A") == b"two\n"
        assert say("B") == b"second\n"  # a sibling it imports is read again too
    finally:
        s.stop()


def busy_port() -> tuple[socket.socket, int]:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    return held, held.getsockname()[1]


def status_ok(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_reload_refused_when_new_status_listener_cannot_bind(pki, procs, events):
    (procs / "h.py").write_text("def serve(sock):\n    sock.write(b'hi')\n")
    status_port = free_port()
    base = definitions(procs, port_section(pki, "A", handler="h:serve"))
    s = start(base + status_section(status_port), procs)
    held, busy = busy_port()
    try:
        assert status_ok(status_port)
        from janustls.core.config import parse_definitions

        mark = events.mark()
        moved = parse_definitions(base + status_section(busy), source="test.ini", base=procs)
        assert in_reactor(lambda: s.service.reload(moved)) is False
        failed = events.wait_for(mark, "janustls.reload.failed")
        assert any("[status] listen" in e and "cannot listen" in e for e in failed["errors"]), failed
        assert not events.since(mark, "janustls.reload.done")
        assert status_ok(status_port)  # the old listener is kept
        assert s.service.definitions.status.listen.startswith(f"tcp:{status_port}")
    finally:
        held.close()
        s.stop()


# -- embedding ------------------------------------------------------------------------------------


def test_embedded_port_takes_a_callable_handler(pki, reactor):
    """The Python API: a srvsock port whose handler is a function of the application."""
    from janustls import listen
    from janustls.core.config import port_from_options

    seen: list[str | None] = []

    def serve(sock: Any) -> None:
        seen.append(sock.cert_info("CN"))
        sock.write(b"from a callable\n")

    f = pki.files
    port = port_from_options("EMB", {"type": "srvsock", "listen": "tcp:0:interface=127.0.0.1", "handler": serve,
                                     "certificate": str(f["server.pem"]), "private_key": str(f["server.key"]),
                                     "client_cert": "require", "addca": str(f["root.ca"])})  # fmt: skip
    listening = in_reactor(lambda: listen(port))
    try:
        with client_context(pki, "alice", tls="1.3").wrap_socket(
            socket.create_connection(("127.0.0.1", listening.getHost().port), timeout=5), server_hostname="localhost"
        ) as c:
            assert c.recv(100) == b"from a callable\n"
        assert seen == ["alice"]
    finally:
        in_reactor(listening.stopListening)
