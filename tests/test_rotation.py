"""Server certificate and key rotated on change, under a stream of handshakes."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from janustls.pki import Issued
from tests.support import EVENTS, start

HANDLER = '''
def serve(sock):
    sock.write(b"hi\\n")
'''


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
certificate = {certs / 'server.pem'}
private_key = {certs / 'server.key'}
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
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = pki.inter.server("localhost", not_before=now - datetime.timedelta(days=9), not_after=now - datetime.timedelta(days=1))
    mark = EVENTS.mark()
    write_pair(certs, expired)
    event = EVENTS.wait_for(mark, "janustls.cert.rotation_failed", "ROT", timeout=10)
    assert "expired" in event["error"]
    (certs / "server.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    mark = EVENTS.mark()
    EVENTS.wait_for(mark, "janustls.cert.rotation_failed", "ROT", timeout=10)
    assert served_serial(port) == first.cert.serial_number
    assert not EVENTS.since(mark, "janustls.cert.rotated", "ROT")
