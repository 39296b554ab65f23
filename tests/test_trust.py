"""Trust checks OpenSSL does not make, the chain rebuild for resumed sessions, and refusal reasons.

Pure: cryptography certificates in memory, no sockets.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from janustls.core.config import port_from_options
from janustls.core.reasons import Reason, Refusal, reason_for_verify_error
from janustls.core.trust import PortTrust, check_key_strength, check_usage, fingerprint, load_port_trust
from janustls.errors import ConfigErrors
from janustls.events import CATALOGUE
from janustls.pki import CA, self_signed


@pytest.fixture(scope="module")
def cas():
    root = CA.create("Trust Root")
    inter = root.intermediate("Trust Intermediate")
    return root, inter


def _leaf(issuer: CA, *, eku=None, digital_signature=True, key_usage=True) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if key_usage:
        b = b.add_extension(
            x509.KeyUsage(digital_signature, False, not digital_signature, False, False, False, False, False, False),
            critical=True,
        )
    return b.sign(issuer.key, hashes.SHA256())


# -- usage and key strength ----------------------------------------------------------------------


def test_check_usage(cas):
    """Client certificates must allow clientAuth where they restrict their usage."""
    _, inter = cas
    assert check_usage(inter.issue("c", usage="client").cert) is None
    assert check_usage(inter.issue("b", usage="both").cert) is None
    assert check_usage(inter.issue("s", usage="server").cert) is Reason.WRONG_USAGE
    assert check_usage(inter.issue("n", usage="none").cert) is Reason.WRONG_USAGE
    # No EKU at all: not restricted.
    assert check_usage(_leaf(inter)) is None
    assert check_usage(_leaf(inter, key_usage=False)) is None
    assert check_usage(_leaf(inter, eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])) is None
    # Key usage that cannot sign cannot authenticate a TLS client.
    assert (
        check_usage(_leaf(inter, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], digital_signature=False)) is Reason.WRONG_USAGE
    )


def test_check_key_strength(cas):
    """RSA under 2048 bits and DSA are weak; EC and RSA 2048 are not."""
    _, inter = cas
    assert check_key_strength(inter.issue("ec").cert) is None
    assert check_key_strength(inter.issue("rsa", key_type="rsa2048").cert) is None
    assert check_key_strength(inter.issue("weak", key_type="rsa1024").cert) is Reason.WEAK_KEY
    assert check_key_strength(inter.issue("dsa", key_type="dsa").cert) is Reason.WEAK_KEY


# -- PortTrust.check: one certificate at one depth --------------------------------------------------


def test_port_trust_check(cas):
    """One certificate at one depth: size, depth, key, replay and usage checks."""
    root, inter = cas
    server = inter.issue("localhost", usage="both")
    trust = PortTrust(
        cas=(root.cert,), verify_depth=2, max_cert_size=4096, server_fingerprints=frozenset({fingerprint(server.cert)})
    )
    alice = inter.issue("alice").cert
    assert trust.check(alice, 800, 0) is None
    assert trust.check(alice, 4097, 0) is Reason.TOO_LARGE
    assert trust.check(root.cert, 800, 2) is None
    assert trust.check(root.cert, 800, 3) is Reason.CHAIN_TOO_LONG
    assert trust.check(inter.issue("weak", key_type="rsa1024").cert, 800, 0) is Reason.WEAK_KEY
    assert trust.check(server.cert, 800, 0) is Reason.SERVER_CERTIFICATE
    assert trust.check(inter.issue("s", usage="server").cert, 800, 0) is Reason.WRONG_USAGE
    # The usage and replay checks are for the client's own certificate only: CAs have no clientAuth.
    assert trust.check(inter.cert, 800, 1) is None
    # No verify_depth: any depth.
    assert PortTrust(cas=(root.cert,)).check(root.cert, 800, 50) is None


def test_count_signed(cas):
    """Janus STATUSCA NumSigned: accepted chains are counted per trust anchor."""
    root, inter = cas
    trust = PortTrust(cas=(root.cert,))
    trust.count_signed([inter.issue("a").cert, inter.cert, root.cert])
    trust.count_signed([root.issue("b").cert, root.cert])
    trust.count_signed([])
    assert trust.signed == {fingerprint(root.cert): 2}


# -- complete_chain: resumed sessions ------------------------------------------------------------------


def test_complete_chain(cas):
    """A resumed session's chain is rebuilt up to the port's anchor, or not at all."""
    root, inter = cas
    trust = PortTrust(cas=(root.cert,))
    alice = inter.issue("alice").cert
    assert trust.complete_chain(alice, [inter.cert]) == [alice, inter.cert, root.cert]
    direct = root.issue("direct").cert
    assert trust.complete_chain(direct, []) == [direct, root.cert]
    # An intermediate the client sent in another order, and one it did not need, change nothing.
    other = CA.create("Unrelated")
    assert trust.complete_chain(alice, [other.cert, inter.cert]) == [alice, inter.cert, root.cert]
    # Without the intermediate the chain cannot reach the anchor: no chain at all.
    assert trust.complete_chain(alice, []) == []
    # Once a verified chain has shown the intermediate, a resumed session needs no copy of it.
    trust.count_signed([alice, inter.cert, root.cert])
    bob = inter.issue("bob").cert
    assert trust.complete_chain(bob, []) == [bob, inter.cert, root.cert]


def test_complete_chain_checks_signatures(cas):
    """A certificate with the right issuer names but other keys never makes a chain."""
    root, _inter = cas
    trust = PortTrust(cas=(root.cert,))
    impostor_root = CA.create("Trust Root")  # same subject, other key
    impostor = impostor_root.intermediate("Trust Intermediate")
    alice = impostor.issue("alice").cert
    assert trust.complete_chain(alice, [impostor.cert]) == []
    assert trust.complete_chain(impostor.cert, []) == []


def test_complete_chain_anchor_is_an_intermediate(cas):
    """A port that trusts the intermediate itself ends the chain there."""
    _, inter = cas
    trust = PortTrust(cas=(inter.cert,))
    alice = inter.issue("alice").cert
    assert trust.complete_chain(alice, [inter.cert]) == [alice, inter.cert]


# -- load_port_trust ---------------------------------------------------------------------------------


def test_load_port_trust(cas, tmp_path):
    """CA and CRL files of a port, loaded and checked with located errors."""
    root, inter = cas
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    (tmp_path / "both.pem").write_bytes(root.cert_pem + inter.cert_pem)
    (tmp_path / "inter.crl").write_bytes(inter.crl_pem())
    (tmp_path / "leaf.pem").write_bytes(inter.issue("leaf").cert_pem)
    port = port_from_options(
        "p", {"certificate": "c.pem", "client_cert": "require", "addca": "root.pem both.pem", "crl": "inter.crl", "verify_depth": "3"},
        procs=tmp_path, embedded=True,
    )  # fmt: skip
    server = inter.issue("localhost", usage="server")
    trust = load_port_trust(port, [server.cert, inter.cert])
    assert trust.cas == (root.cert, inter.cert)  # the root listed twice counts once
    assert len(trust.crls) == 1 and trust.verify_depth == 3
    assert trust.server_fingerprints == frozenset({fingerprint(server.cert)})
    bad = port_from_options(
        "p", {"certificate": "c.pem", "addca": "leaf.pem missing.pem", "crl": "root.pem"}, procs=tmp_path, embedded=True
    )
    with pytest.raises(ConfigErrors) as info:
        load_port_trust(bad)
    found = {(e.key, e.message.split(" ")[0]) for e in info.value.errors}
    assert {e.key for e in info.value.errors} == {"addca", "crl"}
    assert len(info.value.errors) == 3, found


# -- reasons -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "errno,reason",
    [
        (2, Reason.UNKNOWN_CA), (18, Reason.UNKNOWN_CA), (19, Reason.UNKNOWN_CA), (20, Reason.UNKNOWN_CA),
        (21, Reason.UNKNOWN_CA), (9, Reason.NOT_YET_VALID), (10, Reason.EXPIRED), (23, Reason.REVOKED),
        (22, Reason.CHAIN_TOO_LONG), (25, Reason.CHAIN_TOO_LONG), (26, Reason.WRONG_USAGE),
        (7, Reason.BAD_SIGNATURE), (3, Reason.CRL_UNAVAILABLE), (12, Reason.CRL_UNAVAILABLE),
        (66, Reason.WEAK_KEY), (9999, Reason.INVALID),
    ],
)  # fmt: skip
def test_reason_for_verify_error(errno, reason):
    """OpenSSL's verification errors map to typed reasons."""
    assert reason_for_verify_error(errno) is reason


def test_every_reason_has_a_catalogued_event():
    """Each reason has a stable, catalogued event identifier."""
    for reason in Reason:
        assert reason.event_id == f"janustls.refused.{reason.value}"
        assert reason.event_id in CATALOGUE
        assert reason.description


def test_refusal_text():
    """A refusal's text names reason, depth, subject and detail."""
    r = Refusal(Reason.EXPIRED, 0, "CN=expired", "certificate has expired")
    assert str(r) == "expired at depth 0 (CN=expired): certificate has expired"
    assert str(Refusal(Reason.NO_CERTIFICATE)) == "no_certificate"


def test_self_signed_is_not_trusted_by_chain_rebuild(cas):
    """A self-signed certificate never completes to the port's anchor."""
    root, _ = cas
    trust = PortTrust(cas=(root.cert,))
    assert trust.complete_chain(self_signed("lone").cert, []) == []
    # The anchor itself, presented as a leaf, is a chain of one.
    assert trust.complete_chain(root.cert, []) == [root.cert]


def test_intermediate_anchor(cas):
    """An intermediate added without its root needs OpenSSL's partial chains; with its root it does not."""
    root, inter = cas
    assert not PortTrust(cas=(root.cert,)).has_intermediate_anchor
    assert PortTrust(cas=(inter.cert,)).has_intermediate_anchor
    assert not PortTrust(cas=(inter.cert, root.cert)).has_intermediate_anchor
    assert not PortTrust(cas=()).has_intermediate_anchor
