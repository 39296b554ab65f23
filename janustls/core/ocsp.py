"""OCSP without I/O: requests with a nonce, verified responses, and a bounded verdict cache.

Pure (no reactor, no OpenSSL handles), so every rule of RFC 6960 that matters here is
tested without a network: a response counts only when it is signed by the certificate's
issuer or by a responder certificate the issuer gave the OCSP-signing usage, names the
certificate asked about, echoes our nonce when it carries one, and is current (thisUpdate
not in the future, nextUpdate not past, both with a small skew).  Anything else is "no
answer" (`Status.UNAVAILABLE`, with the cause), which the port's `ocsp_fail` decides on.
`janustls.ops.ocspcheck` does the fetching.
"""

from __future__ import annotations

import collections
import datetime
import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

__all__ = [
    "Status",
    "Verdict",
    "OCSPCache",
    "responder_url",
    "cert_id",
    "build_request",
    "judge_response",
    "DEFAULT_SKEW",
    "NO_NEXT_UPDATE_TTL",
]

#: Clock difference tolerated between us and a responder, in seconds.
DEFAULT_SKEW = 300.0
#: How long a response without nextUpdate is reused (RFC 6960 lets a responder omit it).
NO_NEXT_UPDATE_TTL = 300.0
NONCE_SIZE = 16


class Status(str, enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    #: No usable answer: unreachable, garbage, bad signature, stale, `unknown`.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Verdict:
    """What a responder said about one certificate, once verified."""

    status: Status
    cause: str = ""
    #: When the answer stops being usable (nextUpdate, or this_update + a TTL); None for UNAVAILABLE
    #: unless the fetcher gives it a negative-cache time (`janustls.ops.ocspcheck.negative_ttl`).
    expires: datetime.datetime | None = None
    this_update: datetime.datetime | None = None
    revoked_at: datetime.datetime | None = None


def responder_url(cert: x509.Certificate) -> str | None:
    """The certificate's own OCSP responder (Authority Information Access), or None."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            desc.access_location, x509.UniformResourceIdentifier
        ):
            return str(desc.access_location.value)
    return None


def _key_hash(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """The hash of the issuer's public key bits, as a CertID carries it."""
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(algorithm)
    h.update(_spki_bits(spki))
    return h.finalize()


def _spki_bits(spki: bytes) -> bytes:
    """The subjectPublicKey bits of a DER SubjectPublicKeyInfo (minimal DER walk)."""

    def header(buf: bytes, i: int) -> tuple[int, int]:  # (content start, content length)
        n = buf[i + 1]
        if n < 0x80:
            return i + 2, n
        k = n & 0x7F
        return i + 2 + k, int.from_bytes(buf[i + 2 : i + 2 + k], "big")

    start, _ = header(spki, 0)  # SEQUENCE
    alg_start, alg_len = header(spki, start)  # AlgorithmIdentifier
    bits_start, bits_len = header(spki, alg_start + alg_len)  # BIT STRING
    return spki[bits_start + 1 : bits_start + bits_len]  # skip the unused-bits octet


def cert_id(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, int]:
    """The cache key of a certificate: (SHA-1 of its issuer's key, its serial)."""
    return _key_hash(issuer, hashes.SHA1()), cert.serial_number


def build_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    """A DER OCSP request for one certificate (SHA-1 CertID, as responders expect), with `nonce`."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def _verify_signature(key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _names_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        return response.responder_key_hash == _key_hash(cert, hashes.SHA1())
    return response.responder_name == cert.subject


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime
) -> tuple[x509.Certificate | None, str]:
    """The certificate whose key must have signed the response, or (None, why not)."""
    if _names_responder(response, issuer):
        return issuer, ""
    for cert in response.certificates:
        if not _names_responder(response, cert):
            continue
        if cert.issuer != issuer.subject:
            return None, "the delegated responder certificate is not issued by the certificate's issuer"
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError):
            return None, "the delegated responder certificate does not verify with the issuer's key"
        try:
            eku: Iterable[x509.ObjectIdentifier] = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            return None, "the delegated responder certificate lacks the OCSP-signing usage"
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None, "the delegated responder certificate is not valid now"
        return cert, ""
    return None, "signed by neither the issuer nor a responder certificate it delegated to"


def judge_response(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    now: datetime.datetime | None = None,
    skew: float = DEFAULT_SKEW,
) -> Verdict:
    """Verify a DER OCSP response about `cert` and say what it means; never raises."""
    now = now or datetime.datetime.now(datetime.UTC)
    slack = datetime.timedelta(seconds=skew)

    def no(cause: str) -> Verdict:
        return Verdict(Status.UNAVAILABLE, cause)

    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        return no(f"not an OCSP response ({e})")
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return no(f"the responder answered {response.response_status.name.lower()}")
    try:
        signer, why = _signer(response, issuer, now)
        if signer is None:
            return no(why)
        if not _verify_signature(
            signer.public_key(), response.signature, response.tbs_response_bytes, response.signature_hash_algorithm
        ):
            return no("the response's signature does not verify")
        if nonce is not None:
            try:
                theirs = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            except x509.ExtensionNotFound:
                theirs = None  # many responders ignore nonces; thisUpdate bounds freshness
            if theirs is not None and theirs != nonce:
                return no("the response's nonce is not the one sent")
        single = _single_for(response, cert, issuer)
        if single is None:
            return no("the response is about another certificate")
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        if this_update > now + slack:
            return no(f"the response's thisUpdate ({this_update:%Y-%m-%d %H:%M:%S}) is in the future")
        if next_update is not None and next_update < now - slack:
            return no(f"the response is stale (nextUpdate {next_update:%Y-%m-%d %H:%M:%S} UTC has passed)")
        if next_update is None:
            expires = max(now, this_update) + datetime.timedelta(seconds=NO_NEXT_UPDATE_TTL)
        else:
            expires = next_update
        status = single.certificate_status
    except (ValueError, TypeError) as e:  # malformed parts surface lazily in cryptography
        return no(f"a malformed OCSP response ({e})")
    if status is ocsp.OCSPCertStatus.GOOD:
        return Verdict(Status.GOOD, "good", expires, this_update)
    if status is ocsp.OCSPCertStatus.REVOKED:
        when = single.revocation_time_utc
        return Verdict(
            Status.REVOKED,
            f"revoked at {when:%Y-%m-%d %H:%M:%S} UTC" if when else "revoked",
            expires,
            this_update,
            when,
        )
    return no("the responder does not know the certificate (unknown)")


def _single_for(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse | None:
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        algorithm = single.hash_algorithm
        if single.issuer_key_hash == _key_hash(issuer, algorithm):
            return single
    return None


class OCSPCache:
    """Verified answers by (responder, issuer key hash, serial), each until it expires.

    Shared by every connection of a process and bounded (least recently used goes
    first), so a flood of distinct certificates cannot grow it without limit.
    """

    def __init__(self, max_entries: int = 10000) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[str, bytes, int], Verdict] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, bytes, int], now: datetime.datetime) -> Verdict | None:
        verdict = self._entries.get(key)
        if verdict is None or verdict.expires is None or verdict.expires <= now:
            if verdict is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return verdict

    def put(self, key: tuple[str, bytes, int], verdict: Verdict) -> None:
        """Keep an answer until its `expires`; one without (an UNAVAILABLE that the caller did
        not give a negative-cache time) is not kept."""
        if verdict.expires is None:
            return
        self._entries[key] = verdict
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def earliest_expiry(self) -> datetime.datetime | None:
        return min((v.expires for v in self._entries.values() if v.expires is not None), default=None)


def asked_about(chain: Sequence[x509.Certificate], scope: str) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(certificate, issuer) pairs to ask about: the leaf (`leaf`), or every certificate
    below the trust anchor (`chain`); the anchor itself never."""
    pairs = [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
    return pairs[:1] if scope == "leaf" else pairs


def ocsp_warnings(
    scope: str,
    responder: str | None,
    staple: bool,
    cas: Sequence[x509.Certificate],
    server_chain: Sequence[x509.Certificate],
) -> list[str]:
    """What `janustls check` says about a port's OCSP settings: certificates with no responder to ask."""
    warnings: list[str] = []
    if scope != "none" and responder is None:
        warnings.append(
            f"ocsp = {scope} without ocsp_responder: a client certificate that names no OCSP responder "
            "(Authority Information Access) gets no answer, and ocsp_fail decides"
        )
        if scope == "chain":
            for ca in cas:
                # Asked about: an added intermediate whose issuer is added too (otherwise it is the anchor).
                asked = ca.issuer != ca.subject and any(c.subject == ca.issuer for c in cas)
                if asked and responder_url(ca) is None:
                    warnings.append(
                        f"ocsp = chain: the CA {ca.subject.rfc4514_string()} names no OCSP responder to ask about it"
                    )
    if staple and server_chain:
        leaf = server_chain[0]
        if responder is None and responder_url(leaf) is None:
            warnings.append(
                "ocsp_staple = yes, but the server certificate names no OCSP responder and ocsp_responder is not set: nothing is stapled"
            )
        if not any(c.subject == leaf.issuer for c in server_chain[1:]):
            warnings.append(
                "ocsp_staple = yes, but the certificate file holds no issuer after the leaf: nothing is stapled"
            )
    return warnings
