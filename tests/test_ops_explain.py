"""`janustls explain` gives the verdict and reason a real handshake gives, for every test certificate."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from janustls.core.config import parse_definitions
from janustls.core.materials import load_certificates
from janustls.explain import explain, explain_chain, format_verdict
from janustls.tls.policy import build_port_tls
from tests.support import client_context, definitions, install_handlers, port_section, start

CERTS = ["alice", "bob", "direct", "expired", "notyet", "revoked", "othera", "serveronly",
         "selfsigned", "weakrsa", "deep", "large", None]  # fmt: skip
PORTS = ["SECURE", "DIRECT", "OTHER", "CHAINCRL", "REQUEST", "DEEP3", "ALLOWED"]


def _ini(pki: Any, procs: Path) -> str:
    f = pki.files

    def port(name: str, **keys: object) -> str:
        return port_section(pki, name, handler="ok:serve", **keys)

    return definitions(
        procs,
        port("SECURE", client_cert="require", addca=f["root.ca"], crl=f["inter.crl"], verify_depth=2),
        port("DIRECT", client_cert="require", addca=f["root.ca"], verify_depth=1),
        port("OTHER", client_cert="require", addca=f["other.ca"]),
        port(
            "CHAINCRL",
            client_cert="require",
            addca=f["root.ca"],
            crl=f"{f['inter.crl']} {f['root.crl']}",
            crl_check="chain",
        ),
        port("REQUEST", client_cert="request", addca=f["root.ca"]),
        port("DEEP3", client_cert="require", addca=f["root.ca"], verify_depth=3, max_cert_size=65536),
        port(
            "ALLOWED", client_cert="request", addca=f["root.ca"], allow="cn:alice | ou:ops & o:'Example Org' | cn:deep"
        ),
    )


@pytest.fixture(scope="module")
def setup(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_explain")
    install_handlers(procs, ok="ok")
    ini = _ini(pki, procs)
    path = procs / "ports.ini"
    path.write_text(ini)
    s = start(ini, procs)
    yield s, path
    s.stop()


def handshake(port: int, pki: Any, cert: str | None) -> tuple[bool, str | None, int | None, str | None]:
    """A real handshake; (accepted, reason, depth, subject) from the server's log event."""
    from tests.support import EVENTS

    mark = EVENTS.mark()
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    local = f"127.0.0.1:{raw.getsockname()[1]}"
    got = b""
    try:
        with client_context(pki, cert, tls="1.3").wrap_socket(raw, server_hostname="localhost") as s:
            while True:
                data = s.recv(100)
                if not data:
                    break
                got += data
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        raw.close()
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lp = local.rsplit(":", 1)[1]
        # (identity refusals on srvsock ports name the peer as Twisted's address object)
        mine = [e for e in EVENTS.since(mark) if e.get("peer") == local or f"port={lp})" in str(e.get("peer"))]
        for e in mine:
            # An identity rule refuses after the handshake: accepted, then refused.
            if e["event_id"].startswith("janustls.refused."):
                return False, e["reason"], e["depth"], e["subject"]
            if e["event_id"].startswith("janustls.handshake."):
                return False, e["event_id"], None, None
        if got == b"ok\n" and any(e["event_id"] == "janustls.conn.accepted" for e in mine):
            return True, None, None, None
        time.sleep(0.02)
    raise AssertionError(f"no outcome logged for {cert}")


def sent_chain(pki: Any, cert: str | None) -> list[Any]:
    """The chain the test client sends: its PEM file, and for a lone leaf the CA its
    OpenSSL adds from its own trust store (the root) when it can (auto-chaining)."""
    if cert is None:
        return []
    chain = load_certificates(pki.cert(cert))
    root = load_certificates(pki.files["root.ca"])[0]
    if len(chain) == 1 and chain[0].issuer == root.subject and chain[0] != root:
        chain.append(root)
    return chain


@pytest.mark.parametrize("port", PORTS)
def test_explain_matches_handshake(setup, pki, port):
    server, path = setup
    defs = parse_definitions(path.read_text(), source=str(path), base=path.parent)
    tls = build_port_tls(defs.port(port))
    from janustls.ports.access import build_policy

    policy = build_policy(defs.port(port), defs.procs)
    mismatches = []
    for cert in CERTS:
        real = handshake(server.port(port), pki, cert)
        chain = sent_chain(pki, cert)
        v = explain_chain(tls, chain, policy, "127.0.0.1")
        mine = (v.accepted, v.refusal.reason.value if v.refusal else None,
                v.refusal.depth if v.refusal else None, v.refusal.subject if v.refusal else None)  # fmt: skip
        if mine != real:
            mismatches.append((cert, "explain", mine, "handshake", real))
    assert not mismatches, "\n".join(map(str, mismatches))


def test_explain_command(setup, pki, tmp_path):
    _, path = setup
    cli = [sys.executable, "-m", "janustls.cli", "explain", str(path)]
    good = subprocess.run(cli + ["SECURE", str(pki.cert("alice"))], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "ACCEPTED" in good.stdout and "CN=alice" in good.stdout
    bad = subprocess.run(cli + ["secure", str(pki.cert("revoked"))], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "REFUSED (revoked" in bad.stdout and "janustls.refused.revoked" in bad.stdout
    empty = tmp_path / "none.pem"
    empty.write_text("")
    none = subprocess.run(cli + ["SECURE", str(empty)], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "no_certificate" in none.stdout
    unknown = subprocess.run(cli + ["NOPE", str(pki.cert("alice"))], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "NOPE" in unknown.stderr


def test_format_verdict(setup, pki):
    _, path = setup
    v = explain(path, "DIRECT", pki.cert("alice"))
    text = format_verdict(v)
    assert "REFUSED (chain_too_long" in text and "depth" in text


# -- reading what a client holds, and the hints an operator needs --------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([str(Path(sys.executable).parent / "janustls"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})  # fmt: skip


def test_explain_reads_der_and_pkcs12(setup, pki, tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding

    _, path = setup
    der = tmp_path / "direct.der"
    der.write_bytes(pki.issued["direct"].cert.public_bytes(Encoding.DER))
    out = run_cli("explain", str(path), "REQUEST", str(der))
    assert out.returncode == 0 and "ACCEPTED" in out.stdout, out.stdout + out.stderr
    p12 = tmp_path / "alice.p12"
    p12.write_bytes(pki.issued["alice"].pkcs12(b"pw"))
    out = run_cli("explain", str(path), "REQUEST", str(p12), "--password-env", "ALICE_P12", env={"ALICE_P12": "pw"})
    assert out.returncode == 0 and "ACCEPTED" in out.stdout and "CN=alice" in out.stdout, out.stdout + out.stderr
    nopw = run_cli("explain", str(path), "REQUEST", str(p12))
    assert nopw.returncode == 1 and "--password-env" in nopw.stderr
    assert len(nopw.stderr.strip().splitlines()) == 1, nopw.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x30\x82\x01\x00 not a certificate at all")
    bad = run_cli("explain", str(path), "REQUEST", str(junk))
    assert bad.returncode == 1 and str(junk) in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "ParseError" not in bad.stderr, bad.stderr


def test_explain_names_the_missing_intermediate(setup, pki, tmp_path):
    """A leaf sent without its intermediate (`openssl s_client -cert` alone): the intermediate is named."""
    _, path = setup
    leaf = tmp_path / "alice-leaf.pem"
    leaf.write_bytes(pki.issued["alice"].cert_pem)
    out = run_cli("explain", str(path), "REQUEST", str(leaf))
    assert out.returncode == 2 and "unknown_ca" in out.stdout
    assert "missing intermediate" in out.stdout and "CN=Test Intermediate CA" in out.stdout, out.stdout
    assert "-cert_chain" in out.stdout
    # A certificate of a CA the port does not have gets no such hint.
    other = run_cli("explain", str(path), "REQUEST", str(pki.cert("othera")))
    assert other.returncode == 2 and "missing intermediate" not in other.stdout


def test_check_and_explain_warn_about_cas_sharing_a_name(tmp_path):
    """Two trusted CAs with one subject, and a CRL carrying a CA's name but signed by another key:
    the handshake refuses the first CA's clients (CRL signature failure); check and explain say why."""
    from janustls.pki import CA

    procs = install_handlers(tmp_path / "procs", ok="ok")
    a, b = CA.create("Same Root"), CA.create("Same Root")
    server = a.server("localhost", "127.0.0.1")
    server.write(tmp_path, "server")
    client = a.issue("user")
    client.write(tmp_path, "user")
    (tmp_path / "a.pem").write_bytes(a.cert_pem)
    (tmp_path / "b.pem").write_bytes(b.cert_pem)
    (tmp_path / "b.crl").write_bytes(b.crl_pem())
    ini = tmp_path / "ports.ini"
    ini.write_text(definitions(procs, port_section(
        None, certificate=f"{tmp_path}/server.pem", private_key=f"{tmp_path}/server.key", client_cert="require",
        addca=f"{tmp_path}/a.pem {tmp_path}/b.pem", crl=f"{tmp_path}/b.crl", handler="ok:serve",
    )))  # fmt: skip
    checked = run_cli("check", str(ini))
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stdout.splitlines() if "warning" in line.lower()]
    assert any("CN=Same Root" in w and "share" in w for w in warnings), checked.stdout
    assert any("CRL" in w and str(tmp_path / "b.crl") in w and "not signed" in w for w in warnings), checked.stdout
    explained = run_cli("explain", str(ini), "SECURE", str(tmp_path / "user.pem"))
    assert explained.returncode == 2 and "bad_signature" in explained.stdout, explained.stdout
    assert "share" in explained.stdout and "not signed" in explained.stdout, explained.stdout
