"""`janustls pki` as a small development CA, end to end through the real `janustls` command.

init, issue, revoke, list compose across runs (the CA's state lives in its directory);
a revoked client is refused by a real port whose CRL still lists the earlier
revocations; two PKIs trusted on one port both work.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.support import EVENTS, definitions, install_handlers, port_section, start, tls_connect

JANUSTLS = str(Path(sys.executable).parent / "janustls")


def jt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JANUSTLS, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def port_ini(procs: Path, d: Path, addca: str, crl: str) -> str:
    """A port with the server certificate `janustls pki init` made in `d`."""
    return definitions(procs, port_section(None, certificate=f"{d}/server/chain.pem", private_key=f"{d}/server/key.pem",
                                           client_cert="require", addca=addca, crl=crl, handler="ok:serve"))  # fmt: skip


def answer(port: int, ca: Path, chain: Path, key: Path) -> str:
    """'ok' when the port admitted the client, else the refusal's reason from its log."""
    mark = EVENTS.mark()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(chain, key)
    try:
        with tls_connect(port, ctx) as s:
            data = s.recv(100)
        if data == b"ok\n":
            return "ok"
    except (ssl.SSLError, ConnectionError):
        pass
    return str(EVENTS.wait_for(mark, "janustls.refused")["reason"])


@pytest.fixture
def procs(tmp_path: Path) -> Path:
    return install_handlers(tmp_path / "procs", ok="ok_close")


def test_help_shows_the_subcommands():
    out = jt("pki", "--help")
    assert out.returncode == 0, out.stderr
    for word in ("init", "issue", "revoke", "list", "development"):
        assert word in out.stdout


def test_init_issue_revoke_list_and_a_real_port_refuses_the_revoked(tmp_path, procs):
    d = tmp_path / "pki"
    init = jt("pki", "init", str(d), "--name", "Team A")
    assert init.returncode == 0, init.stderr
    root = x509.load_pem_x509_certificate((d / "ca" / "root.pem").read_bytes())
    assert "Team A" in root.subject.rfc4514_string()

    for name in ("alice", "bob", "carol"):
        out = jt("pki", "issue", str(d), name, "--email", f"{name}@example.test", "--dns", f"{name}.example.test",
                 "--uri", f"spiffe://example.test/{name}", "--days", "30")  # fmt: skip
        assert out.returncode == 0, out.stderr
    alice = x509.load_pem_x509_certificate((d / "client" / "alice.pem").read_bytes())
    san = alice.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.test"]
    assert san.get_values_for_type(x509.DNSName) == ["alice.example.test"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.test/alice"]
    days = (alice.not_valid_after_utc - alice.not_valid_before_utc).days
    assert 30 <= days <= 31
    again = jt("pki", "issue", str(d), "alice")
    assert again.returncode == 1 and "alice" in again.stderr

    # Revoke one by name, one by serial (hex): the second CRL keeps the first revocation.
    assert jt("pki", "revoke", str(d), "alice").returncode == 0
    first = x509.load_pem_x509_crl((d / "ca" / "intermediate.crl").read_bytes())
    bob_serial = serial_of(d / "client" / "bob.pem")
    out = jt("pki", "revoke", str(d), format(bob_serial, "X"))
    assert out.returncode == 0, out.stderr
    crl = x509.load_pem_x509_crl((d / "ca" / "intermediate.crl").read_bytes())
    revoked = {r.serial_number for r in crl}
    assert revoked == {serial_of(d / "client" / "alice.pem"), bob_serial}
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert jt("pki", "revoke", str(d), "alice").returncode == 1  # already revoked
    assert jt("pki", "revoke", str(d), "nobody").returncode == 1

    listing = jt("pki", "list", str(d))
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "revoked" in lines["alice"] and "revoked" in lines["bob"]
    assert "revoked" not in lines["carol"] and "expires in" in lines["carol"]  # 30 days: expiring soon
    assert format(bob_serial, "x") in listing.stdout.lower()

    # A real port with that CRL: alice and bob refused as revoked, carol served.
    s = start(port_ini(procs, d, f"{d}/ca/root.pem", f"{d}/ca/intermediate.crl"), procs)
    try:
        ca = d / "ca" / "root.pem"
        c = d / "client"
        assert answer(s.port("SECURE"), ca, c / "carol.pem", c / "carol.key") == "ok"
        assert answer(s.port("SECURE"), ca, c / "alice.pem", c / "alice.key") == "revoked"
        assert answer(s.port("SECURE"), ca, c / "bob.pem", c / "bob.key") == "revoked"
    finally:
        s.stop()


def test_issue_with_a_p12_password(tmp_path):
    d = tmp_path / "pki"
    assert jt("pki", "init", str(d)).returncode == 0
    out = jt("pki", "issue", str(d), "dave", "--p12-password-env", "DAVE_P12", env={"DAVE_P12": "s3cret"})
    assert out.returncode == 0, out.stderr
    key, cert, extra = pkcs12.load_key_and_certificates((d / "client" / "dave.p12").read_bytes(), b"s3cret")
    assert cert is not None and key is not None and len(extra) == 1
    missing = jt("pki", "issue", str(d), "erin", "--p12-password-env", "JANUSTLS_UNSET_VARIABLE")
    assert missing.returncode == 1 and "JANUSTLS_UNSET_VARIABLE" in missing.stderr
    assert not (d / "client" / "erin.pem").exists()


def test_init_refuses_an_existing_ca_unless_forced(tmp_path):
    d = tmp_path / "pki"
    assert jt("pki", "init", str(d)).returncode == 0
    root = (d / "ca" / "root.pem").read_bytes()
    again = jt("pki", "init", str(d))
    assert again.returncode == 1 and "--force" in again.stderr
    assert (d / "ca" / "root.pem").read_bytes() == root
    forced = jt("pki", "init", str(d), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (d / "ca" / "root.pem").read_bytes() != root


def test_the_old_form_never_regenerates_an_existing_pki(tmp_path):
    d = tmp_path / "pki"
    first = jt("pki", str(d), "--client", "alice", "--client", "bob")
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in [d / "ca" / "root.pem", d / "ca" / "intermediate.pem", d / "server" / "chain.pem",
                                          d / "server" / "key.pem", d / "client" / "alice.pem"]}  # fmt: skip
    more = jt("pki", str(d), "--client", "carol")
    assert more.returncode == 0, more.stderr
    assert {p: p.read_bytes() for p in before} == before
    carol = x509.load_pem_x509_certificate((d / "client" / "carol.pem").read_bytes())
    inter = x509.load_pem_x509_certificate((d / "ca" / "intermediate.pem").read_bytes())
    carol.verify_directly_issued_by(inter)
    assert "carol" in jt("pki", "list", str(d)).stdout


def test_two_pkis_trusted_on_one_port(tmp_path, procs):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert jt("pki", "init", str(d)).returncode == 0  # default names differ
        assert jt("pki", "issue", str(d), "user").returncode == 0
    assert jt("pki", "revoke", str(b), "user").returncode == 0
    assert jt("pki", "issue", str(b), "user2").returncode == 0
    names = {x509.load_pem_x509_certificate((d / "ca" / f).read_bytes()).subject
             for d in (a, b) for f in ("root.pem", "intermediate.pem")}  # fmt: skip
    assert len(names) == 4
    ini = port_ini(procs, a, f"{a}/ca/root.pem {b}/ca/root.pem", f"{a}/ca/intermediate.crl {b}/ca/intermediate.crl")
    check_file = tmp_path / "ports.ini"
    check_file.write_text(ini)
    checked = jt("check", str(check_file))
    assert checked.returncode == 0, checked.stderr
    assert "warning" not in (checked.stdout + checked.stderr).lower()
    s = start(ini, procs)
    try:
        ca = a / "ca" / "root.pem"
        assert answer(s.port("SECURE"), ca, a / "client" / "user.pem", a / "client" / "user.key") == "ok"
        assert answer(s.port("SECURE"), ca, b / "client" / "user2.pem", b / "client" / "user2.key") == "ok"
        assert answer(s.port("SECURE"), ca, b / "client" / "user.pem", b / "client" / "user.key") == "revoked"
    finally:
        s.stop()


def test_cli_errors_are_one_line(tmp_path):
    out = jt("pki", "issue", str(tmp_path / "nothing"), "alice")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "no development CA" in out.stderr
    d = tmp_path / "pki"
    assert jt("pki", "init", str(d)).returncode == 0
    bad = jt("pki", "issue", str(d), "../escape")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert jt("pki", "issue", str(d), "x", "--days", "0").returncode != 0
    assert shutil.which("openssl")  # the docs' verify line works with these files
    v = subprocess.run(["openssl", "verify", "-CAfile", str(d / "ca" / "root.pem"), "-untrusted",
                        str(d / "ca" / "intermediate.pem"), str(d / "server" / "chain.pem")],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert v.returncode == 0, v.stdout + v.stderr


def test_openssl_cert_sends_only_the_leaf_and_the_demo_says_so(tmp_path, procs):
    """`openssl s_client -cert chain.pem` sends the leaf alone (refused: unknown_ca); with
    `-cert_chain` the intermediate goes too.  The demo's connect hint says so."""
    d = tmp_path / "pki"
    assert jt("pki", "init", str(d)).returncode == 0 and jt("pki", "issue", str(d), "alice").returncode == 0
    s = start(port_ini(procs, d, f"{d}/ca/root.pem", f"{d}/ca/intermediate.crl"), procs)
    c = d / "client"
    try:
        base = ["openssl", "s_client", "-connect", f"127.0.0.1:{s.port('SECURE')}", "-CAfile", str(d / "ca" / "root.pem"),
                "-cert", str(c / "alice.pem"), "-key", str(c / "alice.key"), "-quiet"]  # fmt: skip
        mark = EVENTS.mark()
        leaf_only = subprocess.run(base, capture_output=True, timeout=30, input=b"")
        assert b"ok" not in leaf_only.stdout
        assert EVENTS.wait_for(mark, "janustls.refused", port="SECURE")["reason"] == "unknown_ca"
        chained = subprocess.run(
            base + ["-cert_chain", str(c / "alice.pem")], capture_output=True, timeout=30, input=b""
        )
        assert b"ok" in chained.stdout, chained.stderr
    finally:
        s.stop()

    # The demo, on free ports, prints its hint and serves; stopped once the hint is out.
    demo = tmp_path / "demo"
    demo.mkdir()
    repo = Path(__file__).parents[1] / "procs"
    for name in ("whoami.py", "echo.py"):
        shutil.copy(repo / name, demo / name)
    (demo / "demo.ini").write_text(
        (repo / "demo.ini").read_text().replace("tcp:8443:", "tcp:0:").replace("tcp:8444:", "tcp:0:")
    )
    proc = subprocess.Popen(
        [JANUSTLS, "demo", str(demo / "demo.ini")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    hint = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            hint += line
            if "Ctrl-C" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "-cert_chain" in hint
    assert "sends only the leaf" in hint, hint
