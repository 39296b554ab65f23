"""The status listener: /status JSON, /metrics counting each refusal reason, `janustls status`."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import client_context, definitions, free_port, install_handlers, secure_port, start, status_section

CERTS = ["alice", "bob", "direct", "expired", "notyet", "revoked", "othera", "serveronly",
         "selfsigned", "weakrsa", "deep", "large", None]  # fmt: skip


@pytest.fixture(scope="module")
def server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_status")
    install_handlers(procs, ok="ok_read")
    f = pki.files
    status_port = free_port()
    ini = definitions(procs, secure_port(pki, cas=f"{f['root.ca']} {f['other.ca']}", crl=f["inter.crl"], verify_depth=2, handler="ok:serve"),
                      status_section(status_port))  # fmt: skip
    (procs / "ports.ini").write_text(ini)
    s = start(ini, procs)
    yield s, f"http://127.0.0.1:{status_port}", procs / "ports.ini"
    s.stop()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()  # type: ignore[no-any-return]


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(get(base + "/metrics").decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def attempt(port: int, pki: Any, cert: str | None) -> None:
    try:
        with client_context(pki, cert, tls="1.3").wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
        ) as s:
            s.sendall(b"hello")
            while s.recv(100):
                pass
    except (ssl.SSLError, ConnectionError):
        pass


def test_metrics_count_each_refusal_reason(server, pki, events):
    s, base, _ = server
    port = s.port("SECURE")
    before = samples(base)
    expected: dict[str, int] = {}
    from janustls.explain import explain_chain
    from janustls.tls.policy import build_port_tls

    tls = build_port_tls(s.service.definitions.port("SECURE"))
    from tests.test_ops_explain import sent_chain

    accepted = 0
    for cert in CERTS:
        v = explain_chain(tls, sent_chain(pki, cert))
        if v.accepted:
            accepted += 1
        else:
            expected[v.refusal.reason.value] = expected.get(v.refusal.reason.value, 0) + 1
        attempt(port, pki, cert)
    assert len(expected) >= 8  # most reasons are exercised
    deadline = time.monotonic() + 5
    while True:
        after = samples(base)
        got = {r: value(after, "janustls_refusals_total", port="SECURE", reason=r)
               - value(before, "janustls_refusals_total", port="SECURE", reason=r) for r in expected}  # fmt: skip
        hs = value(after, "janustls_handshakes_total", port="SECURE", version="TLSv1.3") - value(
            before, "janustls_handshakes_total", port="SECURE", version="TLSv1.3"
        )
        done = value(after, "janustls_connections_total", port="SECURE") - value(
            before, "janustls_connections_total", port="SECURE"
        )
        if (got == expected and hs == accepted and done == accepted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == expected
    assert hs == accepted == 2  # alice, bob
    assert done == accepted
    received = value(after, "janustls_bytes_total", port="SECURE", direction="received") - value(
        before, "janustls_bytes_total", port="SECURE", direction="received"
    )
    sent = value(after, "janustls_bytes_total", port="SECURE", direction="sent") - value(
        before, "janustls_bytes_total", port="SECURE", direction="sent"
    )
    assert (received, sent) == (5 * accepted, 8 * accepted)
    leaf = pki.issued["server"].cert
    assert value(after, "janustls_certificate_expiry_timestamp_seconds", port="SECURE",
                 subject=leaf.subject.rfc4514_string()) == leaf.not_valid_after_utc.timestamp()  # fmt: skip
    crl_names = [k for k in after if k[0] == "janustls_crl_next_update_timestamp_seconds"]
    assert len(crl_names) == 1 and after[crl_names[0]] > time.time()
    assert any(k[0] == "janustls_ca_expiry_timestamp_seconds" for k in after)
    assert value(after, "janustls_midconn_requests_total", port="SECURE", outcome="certificate") == 0


def test_status_json(server, pki):
    s, base, _ = server
    attempt(s.port("SECURE"), pki, "alice")
    doc = json.loads(get(base + "/status"))
    (p,) = doc["ports"]
    assert p["name"] == "SECURE" and p["client_cert"] == "require"
    assert p["address"].endswith(f"port={s.port('SECURE')})")
    assert p["accepted"] >= 1 and "open_connections" in p
    cas = {c["subject"]: c for c in p["cas"]}
    root = cas["CN=Test Root CA,O=janustls development"]
    assert root["signed"] >= 1  # Janus STATUSCA NumSigned
    assert cas["CN=Other Root CA,O=janustls development"]["signed"] == 0
    (crl,) = p["crls"]
    assert crl["revoked"] == 1 and crl["expired"] is False
    assert p["certificate"]["days_left"] > 0


def test_open_connections_counted(server, pki):
    s, base, _ = server
    raw = socket.create_connection(("127.0.0.1", s.port("SECURE")), timeout=5)
    c = client_context(pki, "alice", tls="1.3").wrap_socket(raw, server_hostname="localhost")
    try:
        c.sendall(b"x")  # the handler waits for 5 bytes: the connection stays open
        deadline = time.monotonic() + 5
        while json.loads(get(base + "/status"))["ports"][0]["open_connections"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert value(samples(base), "janustls_connections_open", port="SECURE") >= 1
    finally:
        c.close()


def test_status_command(server, pki):
    _s, base, ini = server
    for args in ([base], ["--port-def", str(ini)]):
        r = subprocess.run(
            [sys.executable, "-m", "janustls.cli", "status", *args], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert "SECURE" in r.stdout and "NUMSIGNED" in r.stdout and "CN=Test Root CA" in r.stdout
        assert "NEXT UPDATE" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "janustls.cli", "status", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "cannot" in r.stderr
