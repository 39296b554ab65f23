"""Handshake outcomes over loopback with real clients, in TLS 1.2 and TLS 1.3.

One set of ports per module (starting them is cheap, but the PKI is shared): each port
hands its connection object to the test (`hand_over`), so the tests check the same
`sock` an application gets, and every refusal is checked in the captured log events.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from janustls.errors import UnknownCertItem
from tests.support import (
    HANDED,
    client_context,
    definitions,
    handed,
    install_handlers,
    port_section,
    secure_port,
    start,
)

VERSIONS = ["1.2", "1.3"]


def _port(pki: Any, name: str, **keys: object) -> str:
    """A port running the capture handler (it hands each connection to the test)."""
    return port_section(pki, name, handler="capture:serve", **keys)


def _days(n: int) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=n)


@pytest.fixture(scope="module")
def server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_tls")
    install_handlers(procs, capture="capture")
    f = pki.files
    stale = procs / "stale.crl"
    stale.write_bytes(pki.inter.crl_pem(last_update=_days(-10), next_update=_days(-1)))
    require = {"client_cert": "require", "addca": f["root.ca"]}
    ini = definitions(
        procs,
        _port(pki, "NONE"),
        _port(pki, "REQUEST", client_cert="request", addca=f["root.ca"]),
        _port(pki, "SECURE", **require, crl=f["inter.crl"], verify_depth=2),
        _port(pki, "DIRECT", **require, verify_depth=1),
        _port(pki, "OTHER", client_cert="require", addca=f["other.ca"]),
        _port(pki, "BIGCERTS", **require, max_cert_size=65536),
        _port(pki, "REPLAY", certificate=pki.cert("servercert"), private_key=pki.key("servercert"), **require),
        _port(pki, "INTERONLY", client_cert="require", addca=f["inter.ca"]),
        _port(pki, "CRLCHAIN", **require, crl=f["inter.crl"], crl_check="chain"),
        _port(pki, "CRLFULL", **require, crl=f"{f['inter.crl']} {f['root.crl']}", crl_check="chain"),
        _port(pki, "CRLSTALE", **require, crl=stale),
        _port(pki, "BOTHCAS", client_cert="require", addca=f"{f['inter.ca']} {f['root.ca']}"),
        _port(pki, "ONLY12", tls_max="1.2", ciphers="ECDHE+CHACHA20"),
        _port(pki, "ONLY13", tls_min="1.3"),
    )
    s = start(ini, procs)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _empty_handover():
    while not HANDED.empty():
        HANDED.get_nowait()
    yield


def attempt(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> tuple[bytes | BaseException, int]:
    """Connect, read until the server closes: (the bytes or the error, the client's own port)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    local_port = raw.getsockname()[1]
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    return b"".join(chunks), local_port
                chunks.append(data)
    except (ssl.SSLError, ConnectionError) as e:
        return e, local_port
    finally:
        raw.close()


def connected(server, pki, port: str, cert: str | None, version: str) -> tuple[Any, ssl.SSLSocket]:
    """A good connection kept open: the server's connection object and the client socket."""
    raw = socket.create_connection(("127.0.0.1", server.port(port)), timeout=5)
    s = client_context(pki, cert, tls=version).wrap_socket(raw, server_hostname="localhost")
    assert s.recv(16) == b"ok\n"
    return handed(), s


# -- client_cert modes --------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_request_port_without_certificate_accepted(server, pki, version):
    """SSLCLCERT: a client without a certificate gets in, with no certificate levels."""
    out, _ = attempt(server.port("REQUEST"), client_context(pki, None, tls=version))
    assert out == b"ok\n"
    sock = handed()
    assert sock.cert_levels() == 0
    assert sock.cert_info("CN") is None
    assert sock.certificate() is None
    assert sock.tls_version == f"TLSv{version}"


@pytest.mark.parametrize("version", VERSIONS)
def test_request_port_with_certificate_verifies_it(server, pki, version):
    """A port that requests a certificate verifies the one it gets: 3 levels for a good chain."""
    out, _ = attempt(server.port("REQUEST"), client_context(pki, "alice", tls=version))
    assert out == b"ok\n"
    sock = handed()
    assert sock.cert_levels() == 3
    assert sock.cert_info("CN") == "alice"


@pytest.mark.parametrize("version", VERSIONS)
def test_request_port_refuses_bad_certificate(server, pki, events, version):
    """Requesting is not trusting: a bad certificate offered to a request port is refused."""
    mark = events.mark()
    out, _ = attempt(server.port("REQUEST"), client_context(pki, "expired", tls=version))
    assert isinstance(out, BaseException)
    e = events.wait_for(mark, "janustls.refused", "REQUEST")
    assert e["event_id"] == "janustls.refused.expired"


@pytest.mark.parametrize("version", VERSIONS)
def test_none_port_does_not_ask(server, pki, version):
    """client_cert = none: the server never asks, so even a client with a certificate has 0 levels."""
    out, _ = attempt(server.port("NONE"), client_context(pki, "alice", tls=version))
    assert out == b"ok\n"
    assert handed().cert_levels() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_require_port_without_certificate_refused_and_logged(server, pki, events, version):
    """SSLCLCERTR: no certificate, no connection; the refusal says port, peer and reason."""
    mark = events.mark()
    out, local_port = attempt(server.port("SECURE"), client_context(pki, None, tls=version))
    assert isinstance(out, (ssl.SSLError, ConnectionError)), out
    e = events.wait_for(mark, "janustls.refused", "SECURE")
    assert e["event_id"] == "janustls.refused.no_certificate"
    assert e["reason"] == "no_certificate"
    assert e["port"] == "SECURE"
    assert e["peer"] == f"127.0.0.1:{local_port}"
    assert HANDED.empty()


@pytest.mark.parametrize("version", VERSIONS)
def test_ca_of_another_port_is_not_trusted(server, pki, events, version):
    """Trust is per port: a certificate from a CA added only to OTHER is refused on SECURE, and vice versa."""
    out, _ = attempt(server.port("OTHER"), client_context(pki, "othera", tls=version))
    assert out == b"ok\n"
    assert handed().cert_info("CN") == "othera"
    mark = events.mark()
    out, _ = attempt(server.port("SECURE"), client_context(pki, "othera", tls=version))
    assert isinstance(out, BaseException)
    assert events.wait_for(mark, "janustls.refused", "SECURE")["reason"] == "unknown_ca"
    mark = events.mark()
    out, _ = attempt(server.port("OTHER"), client_context(pki, "alice", tls=version))
    assert isinstance(out, BaseException)
    assert events.wait_for(mark, "janustls.refused", "OTHER")["reason"] == "unknown_ca"


@pytest.mark.parametrize("version", VERSIONS)
def test_added_intermediate_is_a_trust_anchor(server, pki, events, version):
    """ADDCA of an intermediate trusts what it issued, without its root: 2 levels, the anchor last;
    what the root issued directly stays untrusted on that port."""
    out, _ = attempt(server.port("INTERONLY"), client_context(pki, "alice", tls=version))
    assert out == b"ok\n"
    sock = handed()
    assert sock.cert_levels() == 2
    assert sock.cert_info("CN", 1) == "Test Intermediate CA"
    assert sock.certificate(2) is None
    mark = events.mark()
    out, _ = attempt(server.port("INTERONLY"), client_context(pki, "direct", tls=version))
    assert isinstance(out, BaseException)
    assert events.wait_for(mark, "janustls.refused", "INTERONLY")["reason"] == "unknown_ca"
    # With its root added as well, the chain goes on to the root as before.
    out, _ = attempt(server.port("BOTHCAS"), client_context(pki, "alice", tls=version))
    assert out == b"ok\n"
    assert handed().cert_levels() == 3


# -- bad certificates, each with its own reason -------------------------------------------

# (client certificate, port, reason, depth at fault, whose subject: the client's name or a CA)
BAD = [
    ("expired", "SECURE", "expired", 0, None),
    ("notyet", "SECURE", "not_yet_valid", 0, None),
    ("revoked", "SECURE", "revoked", 0, None),
    ("othera", "SECURE", "unknown_ca", 0, None),
    ("serveronly", "SECURE", "wrong_usage", 0, None),
    ("selfsigned", "SECURE", "unknown_ca", 0, None),
    # deep <- Deep CA 2 <- Deep CA 1 <- intermediate <- root: with verify_depth 2 the
    # intermediate, at depth 3, is the first certificate beyond the allowed depth (OpenSSL's check).
    ("deep", "SECURE", "chain_too_long", 3, "inter"),
    # alice <- intermediate <- root with verify_depth 1: OpenSSL allows it, our own check
    # refuses the root at depth 2.
    ("alice", "DIRECT", "chain_too_long", 2, "root"),
    ("large", "SECURE", "too_large", 0, None),
    ("weakrsa", "SECURE", "weak_key", 0, None),
    ("servercert", "REPLAY", "server_certificate", 0, None),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cert,port,reason,depth,at_fault", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_certificate_refused_with_its_reason(server, pki, events, version, cert, port, reason, depth, at_fault):
    """Each bad certificate is refused, and the log names the reason, the depth and the subject at fault."""
    mark = events.mark()
    out, local_port = attempt(server.port(port), client_context(pki, cert, tls=version))
    assert isinstance(out, (ssl.SSLError, ConnectionError)), f"{cert} was accepted on {port}: {out!r}"
    e = events.wait_for(mark, "janustls.refused", port)
    assert e["event_id"] == f"janustls.refused.{reason}"
    assert e["reason"] == reason
    assert e["depth"] == depth
    if at_fault is None:
        expected = pki.issued[cert].cert.subject.rfc4514_string()
    else:
        expected = getattr(pki, at_fault).cert.subject.rfc4514_string()
    assert e["subject"] == expected
    assert e["peer"] == f"127.0.0.1:{local_port}"
    assert e["port"] == port
    assert len(events.since(mark, "janustls.refused", port)) == 1
    assert HANDED.empty()


@pytest.mark.parametrize("version", VERSIONS)
def test_crl_check_chain_needs_every_ca_crl(server, pki, events, version):
    """crl_check = chain: without the root's CRL the intermediate cannot be checked and the client
    is refused (crl_unavailable at depth 1); with both CRLs it is accepted, and revoked still refused."""
    mark = events.mark()
    out, _ = attempt(server.port("CRLCHAIN"), client_context(pki, "alice", tls=version))
    assert isinstance(out, BaseException)
    e = events.wait_for(mark, "janustls.refused", "CRLCHAIN")
    assert (e["reason"], e["depth"], e["subject"]) == ("crl_unavailable", 1, pki.inter.cert.subject.rfc4514_string())
    out, _ = attempt(server.port("CRLFULL"), client_context(pki, "alice", tls=version))
    assert out == b"ok\n"
    assert handed().cert_levels() == 3
    mark = events.mark()
    out, _ = attempt(server.port("CRLFULL"), client_context(pki, "revoked", tls=version))
    assert isinstance(out, BaseException)
    assert events.wait_for(mark, "janustls.refused", "CRLFULL")["reason"] == "revoked"


@pytest.mark.parametrize("version", VERSIONS)
def test_stale_crl_refuses(server, pki, events, version):
    """A CRL past its next update cannot vouch for anyone: crl_unavailable, not a silent pass."""
    mark = events.mark()
    out, _ = attempt(server.port("CRLSTALE"), client_context(pki, "alice", tls=version))
    assert isinstance(out, BaseException)
    e = events.wait_for(mark, "janustls.refused", "CRLSTALE")
    assert (e["reason"], e["depth"]) == ("crl_unavailable", 0)


@pytest.mark.parametrize("version", VERSIONS)
def test_replay_port_serves_other_clients(server, pki, version):
    """The port whose own certificate is refused as a client certificate still accepts alice:
    the refusal is the replay check, not a trust or usage problem (servercert allows clientAuth)."""
    out, _ = attempt(server.port("REPLAY"), client_context(pki, "alice", tls=version))
    assert out == b"ok\n"
    assert handed().cert_info("CN") == "alice"
    # The same certificate is a good client certificate on a port that does not own it.
    out, _ = attempt(server.port("BIGCERTS"), client_context(pki, "servercert", tls=version))
    assert out == b"ok\n"
    assert handed().cert_info("CN") == "localhost"


@pytest.mark.parametrize("version", VERSIONS)
def test_max_cert_size_is_the_limit(server, pki, version):
    """The large certificate is refused only because of max_cert_size: a port with a higher limit takes it."""
    out, _ = attempt(server.port("BIGCERTS"), client_context(pki, "large", tls=version))
    assert out == b"ok\n"
    assert handed().cert_info("CN") == "large"


# -- protocol versions and ciphers -----------------------------------------------------------


def test_tls_max_and_ciphers(server, pki, events):
    """tls_max = 1.2 and a cipher string: a TLS 1.2 client gets that suite, a TLS 1.3-only client is cut off."""
    out, _ = attempt(server.port("ONLY12"), client_context(pki, None))
    assert out == b"ok\n"
    sock = handed()
    assert sock.tls_version == "TLSv1.2"
    assert sock.cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"
    mark = events.mark()
    out, local_port = attempt(server.port("ONLY12"), client_context(pki, None, tls="1.3"))
    assert isinstance(out, ssl.SSLError)
    e = events.wait_for(mark, "janustls.handshake.failed", "ONLY12")
    assert e["peer"] == f"127.0.0.1:{local_port}"
    assert "version" in e["detail"] or "protocol" in e["detail"], e["detail"]


def test_tls_min(server, pki, events):
    """tls_min = 1.3: a TLS 1.2 client is cut off and logged, a TLS 1.3 client served."""
    mark = events.mark()
    out, _ = attempt(server.port("ONLY13"), client_context(pki, None, tls="1.2"))
    assert isinstance(out, ssl.SSLError)
    events.wait_for(mark, "janustls.handshake.failed", "ONLY13")
    out, _ = attempt(server.port("ONLY13"), client_context(pki, None))
    assert out == b"ok\n"
    assert handed().tls_version == "TLSv1.3"


# -- what a good chain gives the application ----------------------------------------------


def _when(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("version", VERSIONS)
def test_good_chain_cert_info(server, pki, version):
    """alice <- intermediate <- root: 3 levels, each field as text, aliases, level 3 absent."""
    sock, client = connected(server, pki, "SECURE", "alice", version)
    try:
        alice = pki.issued["alice"].cert
        der = alice.public_bytes(serialization.Encoding.DER)
        assert sock.cert_levels() == 3
        assert sock.cert_info("CN") == "alice"
        for alias in ("COMMONNAME", "CNAME", "COMMONN", "cn", "CommonName"):
            assert sock.cert_info(alias) == "alice", alias
        assert sock.cert_info("O") == "Example Org"
        assert sock.cert_info("ORGANIZATION") == "Example Org"
        assert sock.cert_info("OU") == "eng,ops"
        assert sock.cert_info("ORGANIZATIONALUNIT") == "eng,ops"
        assert sock.cert_info("SUBJECT") == "CN=alice,OU=ops,OU=eng,O=Example Org"
        assert sock.cert_info("ISSUER") == "CN=Test Intermediate CA,O=janustls development"
        assert sock.cert_info("SERIAL") == format(alice.serial_number, "X")
        assert sock.cert_info("SERIALNUMBER") == format(alice.serial_number, "X")
        assert sock.cert_info("NOTBEFORE") == _when(alice.not_valid_before_utc)
        assert sock.cert_info("NOTAFTER") == _when(alice.not_valid_after_utc)
        assert sock.cert_info("FINGERPRINT") == hashlib.sha256(der).hexdigest()
        assert sock.cert_info("SAN_DNS") == "alice.example.test"
        assert sock.cert_info("SAN_EMAIL") == "alice@example.test"
        assert sock.cert_info("SAN_URI") == "spiffe://example.test/alice"
        assert sock.cert_info("SAN_IP") == "127.0.0.1"
        assert sock.cert_info("EMAIL") == "alice@example.test"
        assert sock.cert_info("PEM") == alice.public_bytes(serialization.Encoding.PEM).decode()
        for absent in ("L", "ST", "C"):
            assert sock.cert_info(absent) is None
        with pytest.raises(UnknownCertItem):
            sock.cert_info("SHOESIZE")
        # Level 1 is the intermediate, level 2 the root, level 3 nothing.
        assert sock.cert_info("CN", 1) == "Test Intermediate CA"
        assert sock.cert_info("COMMONNAME", level=1) == "Test Intermediate CA"
        assert sock.cert_info("O", 1) == "janustls development"
        assert sock.cert_info("ISSUER", 1) == "CN=Test Root CA,O=janustls development"
        assert sock.cert_info("SAN_DNS", 1) is None
        assert sock.cert_info("CN", 2) == "Test Root CA"
        assert sock.cert_info("SUBJECT", 2) == sock.cert_info("ISSUER", 2) == "CN=Test Root CA,O=janustls development"
        assert sock.cert_info("FINGERPRINT", 2) == pki.root.cert.fingerprint(hashes.SHA256()).hex()
        assert sock.cert_info("CN", 3) is None
        assert sock.cert_info("SUBJECT", 3) is None
        # certificate(): cryptography objects, the same certificates.
        assert isinstance(sock.certificate(), x509.Certificate)
        assert sock.certificate() == alice
        assert sock.certificate(1) == pki.inter.cert
        assert sock.certificate(2) == pki.root.cert
        assert sock.certificate(3) is None
        # TLS facts.
        assert sock.tls_version == f"TLSv{version}" == client.version()
        assert sock.cipher == client.cipher()[0]
        assert sock.peer.host == "127.0.0.1"
        assert sock.peer.port == client.getsockname()[1]
    finally:
        client.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_certificate_issued_by_root_has_two_levels(server, pki, version):
    """A certificate issued directly by the added CA: level 0 the client, level 1 the root, 2 nothing."""
    out, _ = attempt(server.port("DIRECT"), client_context(pki, "direct", tls=version))
    assert out == b"ok\n"
    sock = handed()
    assert sock.cert_levels() == 2
    assert sock.cert_info("CN") == "direct"
    assert sock.cert_info("CN", 1) == "Test Root CA"
    assert sock.cert_info("CN", 2) is None
    assert sock.certificate(1) == pki.root.cert


def _resume(port: int, ctx: ssl.SSLContext, session) -> tuple[ssl.SSLSocket, bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    return s, s.recv(16)


@pytest.mark.parametrize("version", VERSIONS)
def test_resumed_session_keeps_the_identity(server, pki, version):
    """A resumed session (no certificate sent again) still gives the whole verified chain."""
    ctx = client_context(pki, "alice", tls=version)
    session = None
    for n in range(3):
        s, data = _resume(server.port("SECURE"), ctx, session)
        with s:
            assert data == b"ok\n"
            assert s.session_reused is (n > 0)
            session = s.session
            sock = handed()
            assert sock.cert_levels() == 3
            assert sock.cert_info("CN") == "alice" and sock.cert_info("CN", 2) == "Test Root CA"


@pytest.mark.parametrize("version", VERSIONS)
def test_session_does_not_resume_on_another_port(server, pki, events, version):
    """A session made on one port is not resumed on another, whose trust would then be skipped."""
    ctx = client_context(pki, "alice", tls=version)
    s, data = _resume(server.port("REQUEST"), ctx, None)
    with s:
        assert data == b"ok\n"
        session = s.session
    handed()
    mark = events.mark()
    raw = socket.create_connection(("127.0.0.1", server.port("OTHER")), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            assert not s.session_reused
            s.recv(16)
    assert events.wait_for(mark, "janustls.refused", "OTHER")["reason"] == "unknown_ca"


# -- CA names in the CertificateRequest, [addca] patterns ----------------------------------


@pytest.fixture(scope="module")
def addca_server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_addca")
    install_handlers(procs, capture="capture")
    f = pki.files
    ini = definitions(
        procs,
        _port(pki, "SECA", client_cert="require", addca=f["root.ca"]),
        _port(pki, "SECB", client_cert="require"),
        _port(pki, "PLAIN", client_cert="request", addca=f["root.ca"]),
        f"[addca]\nSEC* = {f['other.ca']}\n",
    )
    s = start(ini, procs)
    yield s
    s.stop()


def _ca_names(port: int, version: str) -> list[str]:
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-tls{version.replace('.', '_')}"],
        input=b"",
        capture_output=True,
        timeout=10,
    )
    lines = r.stdout.decode().splitlines()
    start_at = lines.index("Acceptable client certificate CA names") + 1
    names = []
    for line in lines[start_at:]:
        if not line.startswith(("O = ", "CN = ")):
            break
        names.append(line)
    return names


ROOT_NAME = "O = janustls development, CN = Test Root CA"
OTHER_NAME = "O = janustls development, CN = Other Root CA"


@pytest.mark.parametrize("version", VERSIONS)
def test_addca_pattern_ca_names_in_certificate_request(addca_server, version):
    """Each port asks for exactly its own CAs: addca plus matching [addca] patterns, nothing else."""
    assert _ca_names(addca_server.port("SECA"), version) == [ROOT_NAME, OTHER_NAME]
    assert _ca_names(addca_server.port("SECB"), version) == [OTHER_NAME]
    assert _ca_names(addca_server.port("PLAIN"), version) == [ROOT_NAME]


@pytest.mark.parametrize("version", VERSIONS)
def test_addca_pattern_trust_applies(addca_server, pki, events, version):
    """The pattern's CA is trusted on matching ports only."""
    out, _ = attempt(addca_server.port("SECB"), client_context(pki, "othera", tls=version))
    assert out == b"ok\n"
    assert handed().cert_info("CN") == "othera"
    out, _ = attempt(addca_server.port("SECA"), client_context(pki, "othera", tls=version))
    assert out == b"ok\n"
    assert handed().cert_levels() == 2
    mark = events.mark()
    out, _ = attempt(addca_server.port("SECB"), client_context(pki, "alice", tls=version))
    assert isinstance(out, BaseException)
    assert events.wait_for(mark, "janustls.refused", "SECB")["reason"] == "unknown_ca"
    mark = events.mark()
    out, _ = attempt(addca_server.port("PLAIN"), client_context(pki, "othera", tls=version))
    assert isinstance(out, BaseException)
    assert events.wait_for(mark, "janustls.refused", "PLAIN")["reason"] == "unknown_ca"


# -- renegotiation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_echo")
    install_handlers(procs, echo="hello_echo")
    s = start(definitions(procs, secure_port(pki, "ECHO", client_cert="request", handler="echo:serve")), procs)
    yield s
    s.stop()


def _write(p: subprocess.Popen, data: bytes) -> None:
    try:
        p.stdin.write(data)
        p.stdin.flush()
    except BrokenPipeError:
        pass


class _Output:
    """Collects a subprocess's stdout in a thread, so the test can wait for what it expects."""

    def __init__(self, stream) -> None:
        self.data = b""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        while chunk := stream.read1(65536):
            self.data += chunk

    def wait_for(self, text: bytes, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.data and time.monotonic() < deadline:
            time.sleep(0.02)
        return text in self.data


def test_client_initiated_renegotiation_refused(echo_server, pki, events):
    """A TLS 1.2 client asking to renegotiate ("R" in s_client) is refused; the port keeps serving."""
    port = echo_server.port("ECHO")
    mark = events.mark()
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-servername", "localhost"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = _Output(p.stdout)
    try:
        assert out.wait_for(b"hello anonymous (0 certificate levels, TLSv1.2)\n")
        _write(p, b"before\n")
        assert out.wait_for(b"\nbefore\n")
        _write(p, b"R\n")
        try:  # s_client gives up when its renegotiation is refused
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _write(p, b"after\n")
            out.wait_for(b"\nafter\n", timeout=1)
    finally:
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
        p.wait(timeout=10)
    err = p.stderr.read().decode(errors="replace")
    assert "RENEGOTIATING" in err
    assert "no renegotiation" in err
    # Not renegotiated: no second handshake, and nothing more was echoed.
    assert b"after" not in out.data
    assert len(events.since(mark, "janustls.conn.accepted", "ECHO")) == 1
    # The server stays up and serves the next client.
    with client_context(pki, "alice", tls="1.2").wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
    ) as s:
        f = s.makefile("rb")
        assert f.readline() == b"hello alice (3 certificate levels, TLSv1.2)\n"
        s.sendall(b"ping\n")
        assert f.readline() == b"ping\n"
        s.sendall(b"quit\n")


# -- IPv6 ------------------------------------------------------------------------------------


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_port(pki, reactor, events, tmp_path):
    """A port on ::1: the connection's peer is the v6 address, and log events write it [::1]:port."""
    install_handlers(tmp_path, capture="capture")
    ini = definitions(
        tmp_path,
        _port(pki, "SIX", listen="tcp6:0:interface=\\:\\:1", client_cert="require", addca=pki.files["root.ca"]),
    )
    s = start(ini, tmp_path)
    try:
        number = s.port("SIX")
        raw = socket.create_connection(("::1", number), timeout=5)
        with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as c:
            assert c.recv(3) == b"ok\n"
            sock = handed()
            assert (sock.peer.host, sock.peer.port) == ("::1", c.getsockname()[1])
        mark = events.mark()
        raw = socket.create_connection(("::1", number), timeout=5)
        local = raw.getsockname()[1]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with client_context(pki, None).wrap_socket(raw, server_hostname="localhost") as c:
                c.recv(3)
        assert events.wait_for(mark, "janustls.refused", "SIX")["peer"] == f"[::1]:{local}"
    finally:
        s.stop()
