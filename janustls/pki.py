"""A development PKI: CAs, intermediates, server and client certificates, CRLs, PKCS#12.

A small surface over cryptography's builders, for the quick start, the examples and
the tests (which make the bad certificates with it too: expired, not yet valid,
revoked, another CA, serverAuth-only, self-signed, weak key, a chain too deep).
Never for production: keys are written unencrypted.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from janustls.materials import PrivateKey

__all__ = ["CA", "Issued", "KeyType", "make_key", "self_signed", "write_dev_pki", "DevPKI"]

KeyType = Literal["ec", "rsa2048", "rsa1024", "dsa"]
Usage = Literal["client", "server", "both", "none"]

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def make_key(kind: KeyType = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    if kind == "dsa":
        return dsa.generate_private_key(2048)
    raise ValueError(f"unknown key type {kind!r}")


def _name(cn: str, o: str | None = None, ou: Sequence[str] = (), email: str | None = None) -> x509.Name:
    attrs = []
    if o:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    for unit in ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Issued:
    """A certificate with its key and the intermediates a peer needs to verify it."""

    cert: x509.Certificate
    key: PrivateKey
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @property
    def chain_pem(self) -> bytes:
        """The certificate then its intermediates, as a server or client sends them."""
        return b"".join(_pem(c) for c in (self.cert, *self.intermediates))

    def pkcs12(self, password: bytes = b"", name: str | None = None) -> bytes:
        enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        cn = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        label = (name or (str(cn[0].value) if cn else "janustls")).encode()
        return pkcs12.serialize_key_and_certificates(label, self.key, self.cert, list(self.intermediates) or None, enc)

    def write(self, directory: Path, name: str, *, p12: bool = False) -> dict[str, Path]:
        """`NAME.pem` (chain), `NAME.key`, and `NAME.p12` when asked."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"chain": directory / f"{name}.pem", "key": directory / f"{name}.key"}
        paths["chain"].write_bytes(self.chain_pem)
        paths["key"].write_bytes(self.key_pem)
        paths["key"].chmod(0o600)
        if p12:
            paths["p12"] = directory / f"{name}.p12"
            paths["p12"].write_bytes(self.pkcs12())
        return paths


@dataclass
class CA:
    """A certificate authority that issues certificates, intermediates and CRLs."""

    cert: x509.Certificate
    key: PrivateKey
    parent: CA | None = None
    revoked: list[tuple[int, datetime.datetime]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        name: str = "janustls Development Root CA",
        *,
        key_type: KeyType = "ec",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        organization: str | None = "janustls development",
    ) -> CA:
        key = make_key(key_type)
        subject = _name(name, organization)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _hash_for(key))
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA and its parents up to (not including) the root: what a leaf's holder sends."""
        out: list[x509.Certificate] = []
        ca: CA | None = self
        while ca is not None and ca.parent is not None:
            out.append(ca.cert)
            ca = ca.parent
        return tuple(out)

    @property
    def root(self) -> CA:
        return self if self.parent is None else self.parent.root

    def _builder(
        self, subject: x509.Name, public_key: object, not_before: datetime.datetime | None, not_after: datetime.datetime | None, days: int
    ) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + days * _DAY)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )

    def intermediate(self, name: str = "janustls Development Intermediate CA", *, key_type: KeyType = "ec") -> CA:
        key = make_key(key_type)
        cert = (
            self._builder(_name(name, "janustls development"), key.public_key(), None, None, 1825)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(self.key, _hash_for(self.key))
        )
        return CA(cert, key, parent=self)

    def issue(
        self,
        common_name: str,
        *,
        usage: Usage = "client",
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        emails: Iterable[str] = (),
        uris: Iterable[str] = (),
        organization: str | None = None,
        units: Sequence[str] = (),
        email_in_subject: str | None = None,
        key_type: KeyType = "ec",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        days: int = 825,
    ) -> Issued:
        """A leaf certificate for a client (clientAuth), a server (serverAuth), both, or neither."""
        key = make_key(key_type)
        builder = self._builder(
            _name(common_name, organization, units, email_in_subject), key.public_key(), not_before, not_after, days
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        ekus = {
            "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
            "server": [ExtendedKeyUsageOID.SERVER_AUTH],
            "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            "none": [ExtendedKeyUsageOID.CODE_SIGNING],
        }[usage]
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.RFC822Name(e) for e in emails]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, _hash_for(self.key))
        return Issued(cert, key, self.chain)

    def server(self, *hosts: str, common_name: str | None = None, **kwargs: object) -> Issued:
        """A server certificate for host names and IP addresses."""
        hosts = hosts or ("localhost", "127.0.0.1")
        ips = [h for h in hosts if _is_ip(h)]
        dns = [h for h in hosts if not _is_ip(h)]
        return self.issue(common_name or hosts[0], usage="server", dns=dns, ips=ips, **kwargs)  # type: ignore[arg-type]

    def revoke(self, issued: Issued | x509.Certificate, when: datetime.datetime | None = None) -> None:
        cert = issued.cert if isinstance(issued, Issued) else issued
        self.revoked.append((cert.serial_number, when or _now() - datetime.timedelta(minutes=1)))

    def crl(
        self, *, last_update: datetime.datetime | None = None, next_update: datetime.datetime | None = None
    ) -> x509.CertificateRevocationList:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last_update or now - datetime.timedelta(minutes=5))
            .next_update(next_update or now + 30 * _DAY)
        )
        for serial, when in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, _hash_for(self.key))

    def crl_pem(self, **kwargs: datetime.datetime) -> bytes:
        return self.crl(**kwargs).public_bytes(serialization.Encoding.PEM)


def self_signed(common_name: str, *, usage: Usage = "client", key_type: KeyType = "ec") -> Issued:
    """A leaf that signs itself (no CA will trust it)."""
    key = make_key(key_type)
    name = _name(common_name)
    now = _now()
    ekus = [ExtendedKeyUsageOID.CLIENT_AUTH] if usage == "client" else [ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 365 * _DAY)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .sign(key, _hash_for(key))
    )
    return Issued(cert, key)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _hash_for(key: object) -> hashes.HashAlgorithm:
    return hashes.SHA256()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class DevPKI:
    """Where `write_dev_pki` put everything."""

    directory: Path
    root: Path
    intermediate: Path
    crl: Path
    server_chain: Path
    server_key: Path
    clients: dict[str, dict[str, Path]]


def write_dev_pki(directory: Path, clients: Sequence[str] = ("alice",), hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> DevPKI:
    """Root CA, intermediate, a server certificate for `hosts`, and client certificates (PEM and PKCS#12).

    Layout: ca/root.pem, ca/intermediate.pem, ca/intermediate.crl (and the CA keys, so
    more can be issued), server/chain.pem + server/key.pem, client/NAME.{pem,key,p12}.
    """
    root = CA.create()
    inter = root.intermediate()
    ca_dir = directory / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "root.pem").write_bytes(root.cert_pem)
    (ca_dir / "root.key").write_bytes(_key_pem(root.key))
    (ca_dir / "intermediate.pem").write_bytes(inter.cert_pem)
    (ca_dir / "intermediate.key").write_bytes(_key_pem(inter.key))
    for k in ("root.key", "intermediate.key"):
        (ca_dir / k).chmod(0o600)
    (ca_dir / "intermediate.crl").write_bytes(inter.crl_pem())
    server = inter.server(*hosts).write(directory / "server", "chain")
    server_key = directory / "server" / "key.pem"
    server["key"].rename(server_key)
    issued = {
        name: inter.issue(name, organization="janustls development", units=["clients"], emails=[f"{name}@example.test"]).write(
            directory / "client", name, p12=True
        )
        for name in clients
    }
    return DevPKI(
        directory=directory,
        root=ca_dir / "root.pem",
        intermediate=ca_dir / "intermediate.pem",
        crl=ca_dir / "intermediate.crl",
        server_chain=server["chain"],
        server_key=server_key,
        clients=issued,
    )
