"""Reading certificates, keys and CRLs from files, with errors a person can act on.

No reactor, no sockets: this is where "fail fast" happens.  A server certificate that
is expired or does not match its key is refused here, at start, not at the first
handshake.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PublicKeyTypes

from janustls.errors import MaterialError

__all__ = [
    "is_pem",
    "parse_certificates",
    "parse_crls",
    "load_certificates",
    "load_private_key",
    "load_crls",
    "ServerMaterial",
    "load_server_material",
]

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MaterialError(f"file {path} does not exist")
    except IsADirectoryError:
        raise MaterialError(f"{path} is a directory, not a file")
    except OSError as e:
        raise MaterialError(f"cannot read {path}: {e.strerror or e}")


def is_pem(data: bytes) -> bool:
    """Whether `data` is PEM text (else it is read as DER): the one test of the format."""
    return b"-----BEGIN" in data


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of PEM data (or the one of DER data); ValueError when there is none."""
    blocks = _PEM_CERT.findall(data)
    if blocks:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    if is_pem(data):
        raise _NoPEM("certificate")
    return [x509.load_der_x509_certificate(data)]


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL of PEM data (or the one of DER data); ValueError when there is none."""
    blocks = _PEM_CRL.findall(data)
    if blocks:
        return [x509.load_pem_x509_crl(b) for b in blocks]
    if is_pem(data):
        raise _NoPEM("CRL")
    return [x509.load_der_x509_crl(data)]


class _NoPEM(ValueError):
    """PEM text without a block of the kind asked for."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"holds no PEM {kind}")


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (or the one in a DER file), in file order."""
    data = _read(path)
    try:
        return parse_certificates(data)
    except _NoPEM:
        raise MaterialError(f"{path} holds no PEM certificate")
    except ValueError as e:
        raise MaterialError(f"{path} is not a valid certificate: {e}")


def load_private_key(path: Path, password: bytes | None) -> PrivateKey:
    data = _read(path)
    if b"PRIVATE KEY-----" not in data:
        raise MaterialError(f"{path} holds no PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as e:
        if password is None:
            raise MaterialError(
                f"the key in {path} is encrypted; name the environment variable holding its password "
                "with private_key_password_env ="
            )
        raise MaterialError(f"cannot load the key in {path}: {e}")
    except ValueError as e:
        if password is not None:
            raise MaterialError(f"cannot decrypt the key in {path} (wrong password?): {e}")
        raise MaterialError(f"{path} is not a valid private key: {e}")
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
            dsa.DSAPrivateKey,
        ),
    ):
        raise MaterialError(f"the key in {path} cannot sign (type {type(key).__name__})")
    return key


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file, or the one in a DER file."""
    data = _read(path)
    try:
        return parse_crls(data)
    except _NoPEM:
        raise MaterialError(f"{path} holds no PEM CRL")
    except ValueError as e:
        raise MaterialError(f"{path} is not a valid CRL: {e}")


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class ServerMaterial:
    """A port's own certificate chain (leaf first) and private key, checked to belong together."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_server_material(
    certificate: Path,
    private_key: Path,
    password_env: str | None,
    *,
    now: datetime.datetime | None = None,
) -> ServerMaterial:
    """Load and check a server certificate chain and key.

    On failure, raises MaterialError whose `key` names the key to blame:
    `certificate`, `private_key` or `private_key_password_env`.
    """
    try:
        chain = load_certificates(certificate)
    except MaterialError as e:
        raise MaterialError(e.message, key="certificate")
    password: bytes | None = None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise MaterialError(f"the environment variable {password_env} is not set", key="private_key_password_env")
        password = value.encode("utf-8")
    try:
        key = load_private_key(private_key, password)
    except MaterialError as e:
        raise MaterialError(e.message, key="private_key")
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise MaterialError(
            f"the key in {private_key} does not match the certificate in {certificate} ({leaf.subject.rfc4514_string()})",
            key="private_key",
        )
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        raise MaterialError(
            f"the server certificate in {certificate} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            key="certificate",
        )
    if leaf.not_valid_before_utc > now:
        raise MaterialError(
            f"the server certificate in {certificate} is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
            key="certificate",
        )
    return ServerMaterial(chain=tuple(chain), key=key)
