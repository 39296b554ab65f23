"""Server certificate and key rotated on change, under a stream of handshakes."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from janustls.pki import Issued
from tests.support import EVENTS, start

HANDLER = """
def serve(sock):
    sock.write(b"hi\\n")
"""


def served_serial(port: int, tls: str = "1.3") -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost") as s:
        assert s.recv(10) == b"hi\n"
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def write_pair(directory: Path, issued: Issued, *, key: Issued | None = None) -> None:
    """Write certificate then key in place, one after the other (as many tools do)."""
    (directory / "server.pem").write_bytes(issued.chain_pem)
    (directory / "server.key").write_bytes((key or issued).key_pem)


@pytest.fixture
def setup(tmp_path: Path, pki: Any) -> Any:
    procs = tmp_path / "procs"
    procs.mkdir()
    (procs / "h.py").write_text(HANDLER)
    certs = tmp_path / "certs"
    certs.mkdir()
    first = pki.inter.server("localhost", "127.0.0.1")
    write_pair(certs, first)
    ini = f"""
[janustls]
procs = {procs}
[port:ROT]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {certs / "server.pem"}
private_key = {certs / "server.key"}
handler = h:serve
cert_refresh = 0.3
"""
    server = start(ini, tmp_path)
    yield server, certs, first
    server.stop()


def test_rotation_under_a_stream_of_handshakes(setup: Any, pki: Any) -> None:
    server, certs, first = setup
    port = server.port("ROT")
    assert served_serial(port) == first.cert.serial_number
    failures: list[str] = []
    seen: list[int] = []
    stop = threading.Event()

    def stream(tls: str) -> None:
        while not stop.is_set():
            try:
                seen.append(served_serial(port, tls))
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=stream, args=(v,)) for v in ("1.2", "1.3")]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        mark = EVENTS.mark()
        second = pki.inter.server("localhost", "127.0.0.1")
        write_pair(certs, second)
        t0 = time.monotonic()
        event = EVENTS.wait_for(mark, "janustls.cert.rotated", "ROT", timeout=10)
        assert event["serial"] == format(second.cert.serial_number, "X")
        while second.cert.serial_number not in seen and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert time.monotonic() - t0 < 3.0  # within a few watch intervals
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not failures, failures[:3]
    assert len(seen) > 20
    assert seen[-1] == second.cert.serial_number


def test_mismatched_or_expired_pair_keeps_the_old_one(setup: Any, pki: Any) -> None:
    server, certs, first = setup
    port = server.port("ROT")
    mark = EVENTS.mark()
    other = pki.inter.server("localhost", "127.0.0.1")
    write_pair(certs, other, key=pki.inter.server("localhost"))  # a key of another certificate
    event = EVENTS.wait_for(mark, "janustls.cert.rotation_failed", "ROT", timeout=10)
    assert "does not match" in event["error"]
    assert served_serial(port) == first.cert.serial_number
    now = datetime.datetime.now(datetime.UTC)
    expired = pki.inter.server(
        "localhost", not_before=now - datetime.timedelta(days=9), not_after=now - datetime.timedelta(days=1)
    )
    mark = EVENTS.mark()
    write_pair(certs, expired)
    event = EVENTS.wait_for(mark, "janustls.cert.rotation_failed", "ROT", timeout=10)
    assert "expired" in event["error"]
    (certs / "server.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    mark = EVENTS.mark()
    EVENTS.wait_for(mark, "janustls.cert.rotation_failed", "ROT", timeout=10)
    assert served_serial(port) == first.cert.serial_number
    assert not EVENTS.since(mark, "janustls.cert.rotated", "ROT")


PID_HANDLER = """
import os

def serve(sock):
    sock.write(("%d\\n" % os.getpid()).encode())
"""


def served_pid_and_serial(port: int) -> tuple[int, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost") as s:
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(20)
            assert chunk, line
            line += chunk
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(line), x509.load_der_x509_certificate(der).serial_number


def twistd_setup(tmp_path: Path, pki: Any, refresh: str, workers: int) -> tuple[Any, int, Path, Path]:
    import signal  # noqa: F401

    from tests.test_ops_twistd import Twistd, free_port

    procs = tmp_path / "procs"
    procs.mkdir()
    (procs / "h.py").write_text(PID_HANDLER)
    certs = tmp_path / "certs"
    certs.mkdir()
    write_pair(certs, pki.inter.server("localhost", "127.0.0.1"))
    port = free_port()
    ini = procs / "ports.ini"
    ini.write_text(f"""
[janustls]
procs = {procs}
[port:ROT]
type = srvsock
listen = tcp:{port}:interface=127.0.0.1
certificate = {certs / "server.pem"}
private_key = {certs / "server.key"}
handler = h:serve
cert_refresh = {refresh}
[status]
listen = tcp:{free_port()}:interface=127.0.0.1
""")
    pidfile = tmp_path / "twistd.pid"
    args = [
        "-n",
        "--pidfile",
        str(pidfile),
        "--logfile",
        "-",
        "janustls",
        "--port-def",
        str(ini),
        "--log-format",
        "json",
    ]
    if workers:
        args += ["--workers", str(workers)]
    t = Twistd(args, tmp_path)
    t.wait_for("janustls.port.listening")
    for _ in range(workers):
        t.wait_for("janustls.workers.started")
    return t, port, certs, pidfile


def wait_for_serial(port: int, serial: int, pids: int, timeout: float = 20.0) -> set[int]:
    """Connect until `pids` different processes have served `serial`."""
    served: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(served) < pids:
        assert time.monotonic() < deadline, f"only {served} serve the new certificate"
        try:
            pid, got = served_pid_and_serial(port)
        except (OSError, ssl.SSLError, AssertionError):
            time.sleep(0.1)
            continue
        if got == serial:
            served.add(pid)
    return served


def test_rotation_on_sighup(tmp_path: Path, pki: Any) -> None:
    """cert_refresh = 0 (no watching): a new pair on disk is served after SIGHUP."""
    import os
    import signal

    t, port, certs, pidfile = twistd_setup(tmp_path, pki, "0", 0)
    try:
        wait_for_serial(port, served_pid_and_serial_retry(port)[1], 1)
        second = pki.inter.server("localhost", "127.0.0.1")
        write_pair(certs, second)
        time.sleep(0.5)
        assert served_pid_and_serial(port)[1] != second.cert.serial_number  # not watched: not yet
        os.kill(int(pidfile.read_text()), signal.SIGHUP)
        t.wait_for("janustls.reload.done")
        assert served_pid_and_serial(port)[1] == second.cert.serial_number
    finally:
        t.stop()


def served_pid_and_serial_retry(port: int, timeout: float = 20.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return served_pid_and_serial(port)
        except (OSError, ssl.SSLError):
            assert time.monotonic() < deadline
            time.sleep(0.1)


@pytest.mark.parametrize("path", ["watch", "sighup"])
def test_rotation_with_two_workers(tmp_path: Path, pki: Any, path: str) -> None:
    """--workers 2: a new pair on disk is picked up by every worker, by each worker's
    watcher (cert_refresh) or by the reload SIGHUP starts."""
    import os
    import signal

    from janustls.tls import _hidden

    if not _hidden.ticket_keys_supported():
        pytest.skip("no way to set ticket keys here (--workers needs them)")
    t, port, certs, pidfile = twistd_setup(tmp_path, pki, "0.3" if path == "watch" else "0", 2)
    try:
        first = served_pid_and_serial_retry(port)[1]
        assert len(wait_for_serial(port, first, 2)) == 2
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        second = pki.inter.server("localhost", "127.0.0.1", not_before=now - datetime.timedelta(hours=1),
                                  not_after=now + datetime.timedelta(days=10))  # fmt: skip
        write_pair(certs, second)
        if path == "sighup":
            os.kill(int(pidfile.read_text()), signal.SIGHUP)
        assert len(wait_for_serial(port, second.cert.serial_number, 2)) == 2
        # The parent's /status shows the certificate the workers serve (it watches the files too).
        ini = (tmp_path / "procs" / "ports.ini").read_text()
        status_port = int(ini.split("[status]")[1].split("tcp:")[1].split(":")[0])
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=5) as r:
                doc = json.loads(r.read())
            cert = next(p for p in doc["ports"] if p["name"] == "ROT")["certificate"]
            if cert["not_after"].startswith((now + datetime.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%S")):
                break
            assert time.monotonic() < deadline, cert
            time.sleep(0.2)

    finally:
        t.stop()
