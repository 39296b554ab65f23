"""The cert_info vocabulary on cryptography certificates, without any I/O."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from janustls.core.certinfo import ALIASES, EMPTY_CHAIN, ITEMS, CertChain, canonical_item
from janustls.errors import UnknownCertItem
from janustls.pki import CA


@pytest.fixture(scope="module")
def cas():
    root = CA.create("Info Root")
    return root, root.intermediate("Info Intermediate")


def test_aliases_and_case():
    """Janus names (COMMONNAME, CNAME, COMMONN), long forms, any case, '-' for '_'."""
    for name in ("CN", "cn", "COMMONNAME", "CommonName", "CNAME", "COMMONN", " cn "):
        assert canonical_item(name) == "CN"
    assert canonical_item("ORGANIZATIONALUNIT") == "OU"
    assert canonical_item("san-dns") == "SAN_DNS"
    assert canonical_item("EmailAddress") == "EMAIL"
    assert canonical_item("serialnumber") == "SERIAL"
    assert canonical_item("sha256") == "FINGERPRINT"
    assert set(ALIASES.values()) <= set(ITEMS)


def test_unknown_item():
    """An unknown item is an error (a ValueError), not a silent None."""
    with pytest.raises(UnknownCertItem) as info:
        canonical_item("SHOESIZE")
    assert isinstance(info.value, ValueError)
    assert "SHOESIZE" in str(info.value)


def test_every_documented_item_exists():
    """The vocabulary is exactly the documented one (PORTDEF.md)."""
    documented = (
        "CN O OU L ST C EMAIL SUBJECT ISSUER SERIAL NOTBEFORE NOTAFTER FINGERPRINT SAN_DNS SAN_EMAIL SAN_URI SAN_IP PEM"
    )
    assert set(documented.split()) == set(ITEMS)


def test_empty_chain():
    """No certificate: 0 levels, every item None (not an error), no certificate object."""
    assert EMPTY_CHAIN.levels() == 0 and len(EMPTY_CHAIN) == 0 and not EMPTY_CHAIN
    assert EMPTY_CHAIN.info("CN") is None
    assert EMPTY_CHAIN.values("OU") == []
    assert EMPTY_CHAIN.certificate() is None
    with pytest.raises(UnknownCertItem):
        EMPTY_CHAIN.info("NOPE")


def _full_cert(issuer: CA) -> x509.Certificate:
    """A certificate with every subject field and several values where they can repeat."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Bavaria"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Munich"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Org"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "eng"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "sec"),
            x509.NameAttribute(NameOID.COMMON_NAME, "carol"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "carol@subject.test"),
        ]
    )
    import ipaddress

    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("a.example.test"),
            x509.DNSName("b.example.test"),
            x509.RFC822Name("carol@san.test"),
            x509.UniformResourceIdentifier("spiffe://example.test/ns/prod/sa/carol"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::7")),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(0x0ABCDEF0123)
        .not_valid_before(datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2035, 6, 7, 8, 9, 10, tzinfo=datetime.UTC))
        .add_extension(san, critical=False)
        .sign(issuer.key, hashes.SHA256())
    )


def test_every_item_of_a_full_certificate(cas):
    """Every item's text form on a certificate with every field, several values joined by ','."""
    root, inter = cas
    cert = _full_cert(inter)
    chain = CertChain([cert, inter.cert, root.cert])
    assert chain.levels() == 3
    expect = {
        "CN": "carol",
        "O": "Example Org",
        "OU": "eng,ops,sec",
        "L": "Munich",
        "ST": "Bavaria",
        "C": "DE",
        "EMAIL": "carol@subject.test",  # the subject's emailAddress comes before the SAN
        "SUBJECT": "1.2.840.113549.1.9.1=carol@subject.test,CN=carol,OU=sec,OU=ops,OU=eng,O=Example Org,L=Munich,ST=Bavaria,C=DE",
        "ISSUER": "CN=Info Intermediate,O=janustls development",
        "SERIAL": "ABCDEF0123",
        "NOTBEFORE": "2025-01-02T03:04:05Z",
        "NOTAFTER": "2035-06-07T08:09:10Z",
        "FINGERPRINT": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "SAN_DNS": "a.example.test,b.example.test",
        "SAN_EMAIL": "carol@san.test",
        "SAN_URI": "spiffe://example.test/ns/prod/sa/carol",
        "SAN_IP": "192.0.2.7,2001:db8::7",
        "PEM": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }
    for item, value in expect.items():
        assert chain.info(item) == value, item
    assert chain.values("OU") == ["eng", "ops", "sec"]
    assert chain.values("SAN_DNS") == ["a.example.test", "b.example.test"]


def test_email_falls_back_to_san(cas):
    """EMAIL is the subject's emailAddress, else the SAN's email, else None."""
    _root, inter = cas
    issued = inter.issue("dave", emails=["dave@san.test"])
    assert CertChain([issued.cert]).info("EMAIL") == "dave@san.test"
    assert CertChain([inter.issue("erin").cert]).info("EMAIL") is None


def test_levels(cas):
    """Level 0 is the client, 1 its signer, up to the anchor; beyond it (or negative) nothing."""
    root, inter = cas
    leaf = inter.issue("frank").cert
    chain = CertChain([leaf, inter.cert, root.cert])
    assert [chain.info("CN", n) for n in range(4)] == ["frank", "Info Intermediate", "Info Root", None]
    assert chain.certificate(0) is leaf and chain.certificate(2) is root.cert
    assert chain.certificate(3) is None and chain.certificate(-1) is None
    assert chain.info("CN", -1) is None
    assert chain.info("SUBJECT", 2) == chain.info("ISSUER", 2)
    assert chain.certificates == (leaf, inter.cert, root.cert)


def test_values_are_cached_per_level(cas):
    """A field is parsed once per connection: the same list object comes back."""
    _root, inter = cas
    chain = CertChain([inter.issue("gina", units=["a", "b"]).cert, inter.cert])
    first = chain.values("OU")
    assert chain.values("ORGANIZATIONALUNIT") is first
    assert chain.values("OU", 1) == []
