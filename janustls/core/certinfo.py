"""The `cert_info` vocabulary: one field of one certificate of a verified chain, as text.

Pure: works on `cryptography` certificates only.  Level 0 is the client certificate,
level 1 its signer, up to the trust anchor (Janus CertLevels/CertInfo, with one
convention: level 0 by default, 0 levels without a certificate).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from janustls.errors import UnknownCertItem

__all__ = ["CertChain", "ITEMS", "ALIASES", "canonical_item", "VALUE_SEPARATOR"]

#: Fields that can hold several values (OU, SANs) are joined with this.
VALUE_SEPARATOR = ","


def _name_values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


def _san(cert: x509.Certificate, kind: type) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.value.get_values_for_type(kind)]


def _time(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject(oid: x509.ObjectIdentifier) -> Callable[[x509.Certificate], list[str]]:
    return lambda c: _name_values(c.subject, oid)


#: Canonical item -> how to read it (a list of values; empty means absent).
ITEMS: dict[str, Callable[[x509.Certificate], list[str]]] = {
    "CN": _subject(NameOID.COMMON_NAME),
    "O": _subject(NameOID.ORGANIZATION_NAME),
    "OU": _subject(NameOID.ORGANIZATIONAL_UNIT_NAME),
    "L": _subject(NameOID.LOCALITY_NAME),
    "ST": _subject(NameOID.STATE_OR_PROVINCE_NAME),
    "C": _subject(NameOID.COUNTRY_NAME),
    "EMAIL": lambda c: _name_values(c.subject, NameOID.EMAIL_ADDRESS) or _san(c, x509.RFC822Name),
    "SUBJECT": lambda c: [c.subject.rfc4514_string()],
    "ISSUER": lambda c: [c.issuer.rfc4514_string()],
    "SERIAL": lambda c: [format(c.serial_number, "X")],
    "NOTBEFORE": lambda c: [_time(c.not_valid_before_utc)],
    "NOTAFTER": lambda c: [_time(c.not_valid_after_utc)],
    "FINGERPRINT": lambda c: [c.fingerprint(hashes.SHA256()).hex()],
    "SAN_DNS": lambda c: _san(c, x509.DNSName),
    "SAN_EMAIL": lambda c: _san(c, x509.RFC822Name),
    "SAN_URI": lambda c: _san(c, x509.UniformResourceIdentifier),
    "SAN_IP": lambda c: _san(c, x509.IPAddress),
    "PEM": lambda c: [c.public_bytes(serialization.Encoding.PEM).decode("ascii")],
}

#: Janus and long-form names accepted for the canonical items.
ALIASES: dict[str, str] = {
    "COMMONNAME": "CN", "CNAME": "CN", "COMMONN": "CN",
    "ORGANIZATION": "O", "ORGANIZATIONNAME": "O",
    "ORGANIZATIONALUNIT": "OU", "ORGANIZATIONALUNITNAME": "OU", "ORGUNIT": "OU",
    "LOCALITY": "L", "LOCALITYNAME": "L",
    "STATE": "ST", "STATEORPROVINCE": "ST", "STATEORPROVINCENAME": "ST",
    "COUNTRY": "C", "COUNTRYNAME": "C",
    "EMAILADDRESS": "EMAIL", "E": "EMAIL",
    "SUBJECTDN": "SUBJECT", "ISSUERDN": "ISSUER",
    "SERIALNUMBER": "SERIAL",
    "VALIDFROM": "NOTBEFORE", "VALIDTO": "NOTAFTER",
    "SHA256": "FINGERPRINT",
}  # fmt: skip


def canonical_item(item: str) -> str:
    """The canonical name of an item or alias, case-insensitive; UnknownCertItem otherwise."""
    key = item.strip().upper().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in ITEMS:
        raise UnknownCertItem(f"unknown certificate item {item!r}; known: {', '.join(ITEMS)}")
    return key


class CertChain:
    """A verified client chain, leaf first, answering `cert_info` with per-level caching.

    Values are computed on first use and kept: a handler that asks for the CN on every
    request of a keep-alive connection pays for the parse once.
    """

    __slots__ = ("_cache", "_certs")

    def __init__(self, certs: Sequence[x509.Certificate]) -> None:
        self._certs = tuple(certs)
        self._cache: dict[tuple[str, int], list[str]] = {}

    def __len__(self) -> int:
        return len(self._certs)

    def __bool__(self) -> bool:
        return bool(self._certs)

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        return self._certs

    def levels(self) -> int:
        return len(self._certs)

    def certificate(self, level: int = 0) -> x509.Certificate | None:
        if 0 <= level < len(self._certs):
            return self._certs[level]
        return None

    def values(self, item: str, level: int = 0) -> list[str]:
        """Every value of an item at a level (several OUs, several SANs), maybe empty.

        Cached under the name as asked too, so a repeated `cert_info("CN")` is one
        dict lookup.
        """
        cached = self._cache.get((item, level))
        if cached is not None:
            return cached
        key = (canonical_item(item), level)
        cached = self._cache.get(key)
        if cached is None:
            cert = self.certificate(level)
            cached = ITEMS[key[0]](cert) if cert is not None else []
            self._cache[key] = cached
        self._cache[(item, level)] = cached
        return cached

    def info(self, item: str, level: int = 0) -> str | None:
        """One item as text, several values joined by VALUE_SEPARATOR; None when absent."""
        values = self.values(item, level)
        return VALUE_SEPARATOR.join(values) if values else None


EMPTY_CHAIN = CertChain(())
