"""Reload without restart: under a steady stream of handshakes, and an invalid file that changes nothing."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

import pytest

from janustls.core.config import load_definitions
from tests.support import Server, client_context, definitions, in_reactor, install_handlers, secure_port


@pytest.fixture
def setup(pki, reactor, tmp_path):
    procs = install_handlers(tmp_path / "procs", h="hi_cn_echo")
    ini = procs / "ports.ini"
    ini.write_text(definitions(procs, secure_port(pki, "SECURE"), secure_port(pki, "OLD")))
    server = Server(load_definitions(ini))
    yield server, ini, procs
    server.stop()


def hello(port: int, pki: Any, cert: str, timeout: float = 5.0) -> str:
    """A full handshake and the greeting line; raises on refusal."""
    with client_context(pki, cert, tls="1.3").wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=timeout), server_hostname="localhost"
    ) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                raise ConnectionError(f"closed after {data!r}")
            data += chunk
        return data.decode().strip()


def refused(port: int, pki: Any, cert: str) -> bool:
    try:
        hello(port, pki, cert)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False


class Stream(threading.Thread):
    """Handshakes one after another, as fast as they go, counting failures."""

    def __init__(self, port: int, pki: Any) -> None:
        super().__init__(daemon=True)
        self.port, self.pki = port, pki
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                assert hello(self.port, self.pki, "alice") == "hi alice"
                self.ok += 1
            except Exception as e:  # noqa: BLE001
                self.failures.append(repr(e))


def test_reload_under_handshakes(setup, pki, events):
    server, ini, procs = setup
    f = pki.files
    port = server.port("SECURE")
    old_port = server.port("OLD")
    # An established connection, kept across the reload.
    kept = client_context(pki, "alice", tls="1.3").wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")  # fmt: skip
    assert kept.recv(100) == b"hi alice\n"
    assert refused(port, pki, "othera") and not refused(port, pki, "revoked")
    streams = [Stream(port, pki) for _ in range(2)]
    for s in streams:
        s.start()
    time.sleep(0.5)
    # New trust: the other root too; OLD removed, NEW added (with the intermediate's CRL).
    ini.write_text(definitions(procs, secure_port(pki, "SECURE", cas=f"{f['root.ca']} {f['other.ca']}"),
                               secure_port(pki, "NEW", crl=f["inter.crl"])))  # fmt: skip
    mark = events.mark()
    assert in_reactor(server.service.reload) is True
    done = events.wait_for(mark, "janustls.reload.done")
    assert done["kept"] == ["SECURE"] and done["added"] == ["NEW"] and done["removed"] == ["OLD"]
    time.sleep(0.5)
    for s in streams:
        s.stop.set()
    for s in streams:
        s.join(10)
    total = sum(s.ok for s in streams)
    failures = [x for s in streams for x in s.failures]
    assert not failures, failures[:5]
    assert total > 5
    # The established connection goes on.
    kept.sendall(b"still here\n")
    assert kept.recv(100) == b"echo:still here\n"
    kept.close()
    # New connections see the new trust.
    assert hello(port, pki, "othera") == "hi othera"
    # NEW listens, with its CRL; OLD does not.
    new_port = server.port("NEW")
    assert hello(new_port, pki, "bob") == "hi bob"
    assert refused(new_port, pki, "revoked")
    e = events.wait_for(mark, "janustls.refused.revoked", "NEW")
    assert e["reason"] == "revoked"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()
    # NumSigned survived the reload and counts on.
    doc_signed = sum(b.runtime.tls.trust.signed.total() for b in server.service.ports if b.definition.name == "SECURE")
    assert doc_signed >= total


def test_invalid_reload_changes_nothing(setup, pki, events):
    server, ini, procs = setup
    f = pki.files
    port = server.port("SECURE")
    before = ini.read_text()
    ini.write_text(definitions(procs, secure_port(pki, "SECURE", cas=f"{f['other.ca']} /nonexistent/ca.pem", tls_min="1.1"),
                               secure_port(pki, "OLD")))  # fmt: skip
    mark = events.mark()
    assert in_reactor(server.service.reload) is False
    e = events.wait_for(mark, "janustls.reload.failed")
    text = "\n".join(e["errors"])
    assert "tls_min" in text
    assert not events.since(mark, "janustls.reload.done")
    # A file whose values parse but whose files do not load: also nothing changes.
    ini.write_text(before.replace(str(f["root.ca"]), "/nonexistent/ca.pem", 1))
    mark = events.mark()
    assert in_reactor(server.service.reload) is False
    e = events.wait_for(mark, "janustls.reload.failed")
    assert any("/nonexistent/ca.pem" in x and "addca" in x for x in e["errors"])
    # Still the old trust, still both ports.
    assert hello(port, pki, "alice") == "hi alice"
    assert refused(port, pki, "othera")
    assert hello(server.port("OLD"), pki, "bob") == "hi bob"
    # An address that cannot be opened aborts the reload too (nothing swapped).
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    ini.write_text(before.replace("[port:OLD]", "[port:OLD]", 1)
                   + secure_port(pki, "CLASH", port=taken, cas=f["other.ca"]))  # fmt: skip
    mark = events.mark()
    try:
        assert in_reactor(server.service.reload) is False
    finally:
        blocker.close()
    e = events.wait_for(mark, "janustls.reload.failed")
    assert any("CLASH" in x for x in e["errors"])
    assert [b.definition.name for b in server.service.ports] == ["SECURE", "OLD"]
