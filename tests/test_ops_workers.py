"""`--workers N`: two workers both serving, a session from one resumed on the other, metrics that add
up, one reload for all, graceful shutdown; shared ticket keys from a file."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
import urllib.request
from typing import Any

import pytest
from OpenSSL import SSL

from janustls.tls import _hidden, tickets
from tests.support import Twistd, client_context, definitions, free_port, install_handlers, secure_port, status_section

pytestmark = pytest.mark.skipif(not _hidden.ticket_keys_supported(), reason="no way to set ticket keys here")


@pytest.fixture
def workers(pki, tmp_path):
    procs = install_handlers(tmp_path / "procs", h="pid_echo")
    port, status = free_port(), free_port()
    ini = procs / "ports.ini"
    ini.write_text(
        definitions(
            procs,
            secure_port(pki, port=port, listen=f"tcp:{port}:interface=127.0.0.1:backlog=512"),
            status_section(status),
        )
    )
    pidfile = tmp_path / "twistd.pid"
    t = Twistd(["-n", "--pidfile", str(pidfile), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json", "--workers", "2", "--drain-timeout", "3"], tmp_path)  # fmt: skip
    try:
        t.wait_for("janustls.port.listening")
        t.wait_for("janustls.workers.started")
        t.wait_for("janustls.workers.started")
        wait_serving(port, pki, 2)
        yield t, port, status, ini, procs, pidfile
    finally:
        t.stop()


def connect(port: int, pki: Any, cert: str = "alice", session: Any = None, tls: str = "1.3",
            ctx: ssl.SSLContext | None = None) -> tuple[ssl.SSLSocket, int, str]:  # fmt: skip
    ctx = ctx or client_context(pki, cert, tls=tls)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost",
                        session=session)  # fmt: skip
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            raise ConnectionError(f"closed after {line!r}")
        line += chunk
    pid, cn = line.decode().split()
    return s, int(pid), cn


def wait_serving(port: int, pki: Any, n: int, timeout: float = 30) -> set[int]:
    """Connect until `n` different worker pids have answered."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < n:
        assert time.monotonic() < deadline, f"only workers {pids} answered"
        try:
            s, pid, _ = connect(port, pki)
            s.close()
            pids.add(pid)
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    return pids


def metric_sum(status: int, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{status}/metrics", timeout=5).read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_two_workers_resume_each_others_sessions(workers, pki, tls):
    _t, port, _status, *_ = workers
    ctx = client_context(pki, "alice", tls=tls)
    first, first_pid, _ = connect(port, pki, ctx=ctx)
    first.sendall(b"x\n")
    assert first.recv(100) == b"echo:x\n"  # TLS 1.3 tickets arrive after the handshake
    session = first.session
    first.close()
    assert session is not None
    other = None
    for _ in range(200):
        s, pid, cn = connect(port, pki, session=session, ctx=ctx)
        reused = s.session_reused
        s.close()
        assert reused, "a session was not resumed"
        assert cn == "alice"  # the resumed connection still knows its client
        if pid != first_pid:
            other = pid
            break
    assert other is not None, "every resumption went to the first worker"


def test_metrics_and_status_add_up_across_workers(workers, pki):
    _t, port, status, *_ = workers
    before = metric_sum(status, "janustls_handshakes_total", port="SECURE")
    pids = set()
    for _ in range(30):
        s, pid, _ = connect(port, pki)
        s.close()
        pids.add(pid)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(port, pki, cert="othera")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        metric_sum(status, "janustls_handshakes_total", port="SECURE") - before < 30
        or metric_sum(status, "janustls_refusals_total", port="SECURE", reason="unknown_ca") < 1
    ):  # each worker publishes its counters on its own schedule
        time.sleep(0.1)
    assert metric_sum(status, "janustls_handshakes_total", port="SECURE") - before == 30
    assert metric_sum(status, "janustls_refusals_total", port="SECURE", reason="unknown_ca") >= 1
    held, _, _ = connect(port, pki)
    time.sleep(1.5)  # NumSigned is published every second
    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{status}/status", timeout=5).read())
    (p,) = doc["ports"]
    assert p["accepted"] >= 31 and p["refused"] >= 1 and p["open_connections"] >= 1
    assert len(doc["workers"]) == 2
    root = next(c for c in p["cas"] if c["subject"].startswith("CN=Test Root CA"))
    assert root["signed"] >= 31
    held.close()


def test_one_reload_for_all_and_graceful_shutdown(workers, pki):
    t, port, status, ini, procs, pidfile = workers
    held, held_pid, _ = connect(port, pki)
    # A steady stream of handshakes across the rolling replacement of the workers.
    import threading

    ok, failures, stop = [0], [], threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                s, _, cn = connect(port, pki)
                s.close()
                assert cn == "alice"
                ok[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(2)]
    for th in threads:
        th.start()
    ini.write_text(
        definitions(
            procs,
            secure_port(
                pki,
                port=port,
                cas=f"{pki.files['root.ca']} {pki.files['other.ca']}",
                listen=f"tcp:{port}:interface=127.0.0.1:backlog=512",
            ),
            status_section(int(status)),
        )
    )
    os.kill(int(pidfile.read_text()), signal.SIGHUP)
    t.wait_for("janustls.reload.done")
    time.sleep(0.3)
    stop.set()
    for th in threads:
        th.join(10)
    assert not failures, failures[:3]
    assert ok[0] > 5
    assert metric_sum(status, "janustls_reloads_total", outcome="done") == 1  # counted once, by the parent
    # The new generation serves the new trust on both of its workers; no attempt was refused.
    new_pids: set[int] = set()
    deadline = time.monotonic() + 30
    while len(new_pids) < 2:
        assert time.monotonic() < deadline
        s, pid, cn = connect(port, pki, cert="othera")
        s.close()
        assert cn == "othera"
        new_pids.add(pid)
    assert held_pid not in new_pids
    # The old worker drains: the held connection still works.
    held.sendall(b"still\n")
    assert held.recv(100) == b"echo:still\n"
    # An invalid file changes nothing.
    ini.write_text(ini.read_text().replace("handler = h:serve", "handler = nope:serve"))
    os.kill(int(pidfile.read_text()), signal.SIGHUP)
    failed = t.wait_for("janustls.reload.failed")
    assert any("handler" in e for e in failed["errors"])
    s, pid, _ = connect(port, pki, cert="othera")
    s.close()
    assert pid in new_pids
    # Graceful shutdown: the parent exits within the drain deadline (3 s) plus start-up slack.
    started = time.monotonic()
    t.proc.send_signal(signal.SIGTERM)
    t.proc.wait(20)
    assert time.monotonic() - started < 10
    held.close()


def test_ticket_key_file(tmp_path):
    key = tmp_path / "ticket.key"
    key.write_bytes(os.urandom(80).hex().encode())
    master = tickets.load_master(key)
    assert len(master) == 80
    a, b = SSL.Context(SSL.TLS_SERVER_METHOD), SSL.Context(SSL.TLS_SERVER_METHOD)
    tickets.configure(key)
    try:
        assert tickets.apply(a, "SECURE") and tickets.apply(b, "secure")
        assert _hidden.get_ticket_keys(a) == _hidden.get_ticket_keys(b) == tickets.port_keys(master, "SECURE")
        assert tickets.port_keys(master, "OTHER") != tickets.port_keys(master, "SECURE")
    finally:
        tickets.configure(None)
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    with pytest.raises(Exception, match="at least 32"):
        tickets.load_master(short)


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_two_servers_with_one_key_file_resume_each_others_sessions(pki, reactor, tmp_path, tls):
    """Two machines behind a load balancer, simulated by two services with the same port name.

    The second never saw the client's chain: the ticket carries the intermediates, so the
    resumed connection still names its client and issuer."""
    from tests.support import start

    procs = install_handlers(tmp_path / "procs", h="pid_echo")
    key = tmp_path / "ticket.key"
    key.write_bytes(os.urandom(80))
    ini = definitions(procs, secure_port(pki))
    tickets.configure(key)
    try:
        a, b = start(ini, procs), start(ini, procs)
    finally:
        tickets.configure(None)
    alone = start(ini, procs)  # OpenSSL's own random keys: cannot resume the others' tickets
    try:
        ctx = client_context(pki, "alice", tls=tls)
        s, _, _ = connect(a.port("SECURE"), pki, ctx=ctx)
        s.sendall(b"x\n")
        s.recv(100)
        session = s.session
        s.close()
        s, _, cn = connect(b.port("SECURE"), pki, ctx=ctx, session=session)
        assert s.session_reused and cn == "alice"
        s.close()
        s, _, cn = connect(alone.port("SECURE"), pki, ctx=ctx, session=session)
        assert not s.session_reused and cn == "alice"  # a full handshake instead, never an error
        s.close()
    finally:
        for server in (a, b, alone):
            server.stop()
