"""Per-port trust: the CAs added to a port (ADDCA), its CRLs, depth, and the checks OpenSSL lacks.

No reactor and no OpenSSL handles: `janustls.tls.policy` turns this into a pyOpenSSL store
and calls `check` from its verify callback; `janustls.explain` can call the same code.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from janustls.core.config import CRLCheck, CRLExpired, PortDefinition
from janustls.core.materials import load_certificates, load_crls
from janustls.core.reasons import Reason
from janustls.errors import ConfigError, ConfigErrors, MaterialError

__all__ = [
    "PortTrust",
    "load_port_trust",
    "check_usage",
    "check_key_strength",
    "MIN_RSA_BITS",
    "trust_warnings",
    "port_trust_warnings",
]

MIN_RSA_BITS = 2048
_MAX_REMEMBERED = 1024


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def check_usage(cert: x509.Certificate) -> Reason | None:
    """A client certificate must allow client authentication where it restricts its usage."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            return Reason.WRONG_USAGE
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not ku.digital_signature:
            return Reason.WRONG_USAGE
    return None


def check_key_strength(cert: x509.Certificate) -> Reason | None:
    """RSA under 2048 bits and DSA are refused at any level of the chain."""
    try:
        key = cert.public_key()
    except (ValueError, TypeError):
        return Reason.INVALID
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return Reason.WEAK_KEY
    if isinstance(key, dsa.DSAPublicKey):
        return Reason.WEAK_KEY
    return None


@dataclass
class PortTrust:
    """What a port trusts for client certificates, and the extra checks it applies."""

    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    crl_check: CRLCheck = CRLCheck.LEAF
    verify_depth: int | None = None
    max_cert_size: int = 16384
    server_fingerprints: frozenset[bytes] = frozenset()
    crl_expired: CRLExpired = CRLExpired.REFUSE
    #: A CRL of a crl_url has not arrived yet: CRL checking is on all the same (fail closed).
    crl_pending: bool = False
    #: Janus STATUSCA NumSigned: accepted client chains per trust anchor (by fingerprint).
    signed: collections.Counter[bytes] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._intermediates: dict[bytes, list[x509.Certificate]] = {}
        # Per-handshake shortcuts: anchors' fingerprints, intermediates already remembered.
        self._anchor_fingerprints: dict[x509.Certificate, bytes] = {}
        self._remembered: set[x509.Certificate] = set()
        # id(chain tuple) -> (the tuple, its anchor's fingerprint): connections that share
        # a verified chain (`PortTLS.client_chain`) pass the same tuple.
        self._counted: dict[int, tuple[tuple[x509.Certificate, ...], bytes]] = {}
        self._by_subject: dict[bytes, list[x509.Certificate]] = {}
        for ca in self.cas:
            self._by_subject.setdefault(ca.subject.public_bytes(), []).append(ca)

    def check(self, cert: x509.Certificate, der_size: int, depth: int) -> Reason | None:
        """Our checks of one certificate of a chain that OpenSSL found otherwise acceptable."""
        if der_size > self.max_cert_size:
            return Reason.TOO_LARGE
        if self.verify_depth is not None and depth > self.verify_depth:
            return Reason.CHAIN_TOO_LONG
        weak = check_key_strength(cert)
        if weak is not None:
            return weak
        if depth == 0:
            if fingerprint(cert) in self.server_fingerprints:
                return Reason.SERVER_CERTIFICATE
            return check_usage(cert)
        return None

    @property
    def has_intermediate_anchor(self) -> bool:
        """Whether a CA is added without the CA that issued it (an intermediate as trust anchor)."""
        subjects = {ca.subject for ca in self.cas}
        return any(ca.issuer != ca.subject and ca.issuer not in subjects for ca in self.cas)

    def count_signed(self, chain: Sequence[x509.Certificate]) -> None:
        """Count an accepted chain for its anchor, and remember its intermediates.

        A resumed session has the client's leaf but not the chain OpenSSL verified;
        the intermediates seen here let `complete_chain` rebuild it.
        """
        seen = self._counted.get(id(chain))
        if seen is not None and seen[0] is chain:
            self.signed[seen[1]] += 1
            return
        if chain:
            anchor = chain[-1]
            fp = self._anchor_fingerprints.get(anchor)
            if fp is None:
                if len(self._anchor_fingerprints) > _MAX_REMEMBERED:
                    self._anchor_fingerprints.clear()
                fp = self._anchor_fingerprints[anchor] = fingerprint(anchor)
            self.signed[fp] += 1
            for cert in chain[1:-1]:
                if cert in self._remembered:
                    continue
                if len(self._intermediates) > _MAX_REMEMBERED:
                    self._intermediates.clear()
                    self._remembered.clear()
                    self._counted.clear()
                known = self._intermediates.setdefault(cert.subject.public_bytes(), [])
                if cert not in known:
                    known.append(cert)
                self._remembered.add(cert)
            if isinstance(chain, tuple):
                if len(self._counted) > _MAX_REMEMBERED:
                    self._counted.clear()
                self._counted[id(chain)] = (chain, fp)

    def resumed_problem(
        self, chain: Sequence[x509.Certificate], *, revocation: bool = True
    ) -> tuple[Reason, int] | None:
        """What OpenSSL would find wrong now with a chain: (reason, depth) or None.

        Validity dates at every level; for the certificates `crl_check` covers (when the
        port has CRLs): a CRL of their issuer must be there and current (unless
        `crl_expired = tolerate`), and (with `revocation`) must not list them.  A session
        made before a CRL listed its client, or before a certificate or CRL expired,
        must not come back as that client.
        """
        now = datetime.datetime.now(datetime.UTC)
        checked = len(chain) if self.crl_check is CRLCheck.CHAIN else 1
        for depth, cert in enumerate(chain):
            if cert.not_valid_after_utc < now:
                return Reason.EXPIRED, depth
            if cert.not_valid_before_utc > now:
                return Reason.NOT_YET_VALID, depth
            if not self.crls or depth >= checked or depth >= len(chain) - 1:
                continue
            crls = [crl for crl in self.crls if crl.issuer == cert.issuer]
            if not crls:
                return Reason.CRL_UNAVAILABLE, depth  # OpenSSL: unable to get certificate CRL
            for crl in crls:
                if crl.last_update_utc > now:
                    return Reason.CRL_UNAVAILABLE, depth  # CRL is not yet valid
                stale = crl.next_update_utc is not None and crl.next_update_utc < now
                if stale and self.crl_expired is CRLExpired.REFUSE:
                    return Reason.CRL_UNAVAILABLE, depth  # CRL has expired
                if revocation and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    return Reason.REVOKED, depth
        return None

    def complete_chain(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]
    ) -> list[x509.Certificate]:
        """Rebuild leaf..anchor for a resumed session, whose verified chain OpenSSL does not keep.

        Each link is checked by signature, and the chain must end at a CA of this
        port: [] otherwise (a session from before a reload that removed its CA is
        treated as carrying no certificate).
        """
        chain, anchored = walk_chain(
            leaf,
            lambda c: self._by_subject.get(c.issuer.public_bytes(), []),
            lambda c: (
                [i for i in intermediates if i.subject == c.issuer]
                + self._intermediates.get(c.issuer.public_bytes(), [])
            ),
            steps=32,
        )
        return chain if anchored else []


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` signed `cert` (names and signature)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, unsupported key types, name mismatch
        return False
    return True


def walk_chain(
    leaf: x509.Certificate,
    anchors: Callable[[x509.Certificate], Iterable[x509.Certificate]],
    candidates: Callable[[x509.Certificate], Iterable[x509.Certificate]],
    *,
    steps: int,
) -> tuple[list[x509.Certificate], bool]:
    """leaf, then each issuer found (checked by signature) until a trust anchor: the one walk
    from a leaf to a port's CAs.  `anchors(cert)` and `candidates(cert)`: the trusted and the
    other certificates that may have issued `cert`.  Returns (the chain as far as it goes,
    whether it reached an anchor), after at most `steps` links."""
    chain = [leaf]
    current = leaf
    for _ in range(steps):
        ca = next((c for c in anchors(current) if issued_by(current, c)), None)
        if ca is not None:
            if ca != current:
                chain.append(ca)
            return chain, True
        parent = next((c for c in candidates(current) if c not in chain and issued_by(current, c)), None)
        if parent is None:
            return chain, False
        chain.append(parent)
        current = parent
    return chain, False


def load_port_trust(port: PortDefinition, server_chain: Sequence[x509.Certificate] = ()) -> PortTrust:
    """Read a port's CA and CRL files; every unusable file is a located ConfigError."""
    errors: list[ConfigError] = []
    cas: list[x509.Certificate] = []
    seen: set[bytes] = set()
    for path in port.addca:
        try:
            for ca in load_certificates(path):
                fp = fingerprint(ca)
                if fp not in seen:
                    seen.add(fp)
                    cas.append(ca)
        except MaterialError as e:
            errors.append(ConfigError(port.source, port.section, "addca", str(e)))
    crls: list[x509.CertificateRevocationList] = []
    pending = False
    for path in port.crl:
        if path.parent.name == ".crl-cache" and port.crl_url and not path.exists():
            pending = True  # a crl_url not fetched yet: its CA's clients are refused until it is
            continue
        try:
            crls.extend(load_crls(path))
        except MaterialError as e:
            errors.append(ConfigError(port.source, port.section, "crl", str(e)))
    for ca in cas:
        if not _is_ca(ca):
            errors.append(
                ConfigError(
                    port.source,
                    port.section,
                    "addca",
                    f"{ca.subject.rfc4514_string()} is not a CA certificate (basicConstraints CA:FALSE or missing)",
                )
            )
    if errors:
        raise ConfigErrors(errors)
    return PortTrust(
        cas=tuple(cas),
        crls=tuple(crls),
        crl_check=port.crl_check,
        verify_depth=port.verify_depth,
        max_cert_size=port.max_cert_size,
        crl_expired=port.crl_expired,
        server_fingerprints=frozenset(fingerprint(c) for c in server_chain[:1]),
        crl_pending=pending,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _short(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()} (SHA-256 {fingerprint(cert).hex()[:16]}...)"


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return bool(crl.is_signature_valid(ca.public_key()))  # type: ignore[arg-type]  # a CA's key signs: never the X25519/X448 kinds the stub admits
    except (TypeError, ValueError):
        return False


def trust_warnings(
    cas: Sequence[x509.Certificate],
    crls: Sequence[tuple[str, x509.CertificateRevocationList]],
    chain: Sequence[x509.Certificate] = (),
) -> list[str]:
    """What is legal but breaks clients: OpenSSL finds issuers and CRLs by name, so two
    trusted CAs with one subject, or a CRL whose issuer name is a CA's but whose signature
    is another key's, make it refuse good clients ("CRL signature failure").

    `crls` pairs each CRL with where it came from (its file); `chain` adds the CAs of a
    client's chain (intermediates the port does not list) to the CAs a CRL is checked against.
    """
    warnings: list[str] = []
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for ca in cas:
        if ca not in by_subject.setdefault(ca.subject, []):
            by_subject[ca.subject].append(ca)
    for subject, same in by_subject.items():
        if len(same) > 1:
            keys = ", ".join(f"SHA-256 {fingerprint(c).hex()[:16]}..." for c in same)
            warnings.append(
                f"{len(same)} trusted CAs share the subject {subject.rfc4514_string()} ({keys}): OpenSSL looks "
                "issuers and CRLs up by name, so one CA's CRL can refuse the other's clients; give each CA its "
                "own name (janustls pki init --name)"
            )
    known = list(cas) + [c for c in chain if _is_ca(c) and c not in cas]
    for source, crl in crls:
        for ca in known:
            if ca.subject == crl.issuer and not _crl_signed_by(crl, ca):
                warnings.append(
                    f"the CRL {source} names {crl.issuer.rfc4514_string()} as its issuer but is not signed by "
                    f"the key of the CA {_short(ca)}: that CA's clients are refused (CRL signature failure)"
                )
    return warnings


def port_trust_warnings(port: PortDefinition, trust: PortTrust, chain: Sequence[x509.Certificate] = ()) -> list[str]:
    """`trust_warnings` for a port, naming each CRL by its file."""
    crls: list[tuple[str, x509.CertificateRevocationList]] = []
    for path in port.crl:
        try:
            crls.extend((str(path), crl) for crl in load_crls(path))
        except MaterialError:
            continue  # reported as an error where the port is built
    from_files = [crl.public_bytes(serialization.Encoding.DER) for _, crl in crls]
    crls += [
        ("(fetched from crl_url)", crl)
        for crl in trust.crls
        if crl.public_bytes(serialization.Encoding.DER) not in from_files
    ]
    return trust_warnings(trust.cas, crls, chain)
