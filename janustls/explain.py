"""Why was I refused? A port's verdict on a client chain, without a server running.

The answer must be the one a handshake would give, so nothing here re-implements
verification: the port's real pyOpenSSL Context is built by `janustls.tls.policy`, its
certificate store (CAs, CRLs, flags) runs OpenSSL's chain verification with the
purpose a TLS server uses, and `PortTrust.check` is applied per certificate in the
order OpenSSL's verify callback would see them; then the port's identity rules
(`allow =`).  The one thing the store cannot carry
(the Context's verify depth) is applied as OpenSSL applies it while building the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from OpenSSL import crypto

from janustls.core.config import (
    ClientCertMode,
    CRLCheck,
    CRLExpired,
    Definitions,
    OCSPScope,
    PortDefinition,
    load_definitions,
)
from janustls.core.identity import Policy, Subject
from janustls.core.materials import is_pem, load_certificates, parse_certificates
from janustls.core.ocsp import Status as OCSPStatus
from janustls.core.ocsp import asked_about, responder_url
from janustls.core.reasons import Reason, Refusal, reason_for_verify_error
from janustls.core.trust import check_key_strength, issued_by, port_trust_warnings, walk_chain
from janustls.errors import MaterialError
from janustls.ops.httpfetch import run_to_completion
from janustls.ops.ocspcheck import OCSPChecker
from janustls.ports.access import build_policy
from janustls.tls import _openssl
from janustls.tls.policy import CRL_HAS_EXPIRED, PortTLS, build_port_tls

__all__ = ["Verdict", "explain_chain", "explain", "format_verdict", "load_client_chain", "missing_intermediate"]

#: X509_V_ERR numbers OpenSSL reports while walking the chain from the anchor down
#: (signature and validity time), after the verify callback has already seen, with
#: ok=1, every certificate above the failing one: those certificates get our checks first.
_WALK_ERRORS = frozenset({7, 9, 10})


@dataclass(frozen=True)
class Verdict:
    """A port's answer to a client chain: accepted, or refused and why."""

    port: str
    accepted: bool
    refusal: Refusal | None = None
    #: The chain as verified (leaf to trust anchor) when it was; what was presented otherwise.
    chain: tuple[x509.Certificate, ...] = ()
    notes: tuple[str, ...] = field(default=())


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "<unparsable subject>"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _our_checks(tls: PortTLS, chain: Sequence[x509.Certificate], below: int) -> Refusal | None:
    """PortTrust.check from the anchor down to depth `below` + 1, as the verify callback runs it."""
    for depth in range(len(chain) - 1, below, -1):
        cert = chain[depth]
        reason = tls.trust.check(cert, len(_der(cert)), depth)
        if reason is not None:
            return Refusal(reason, depth, _subject(cert), reason.description)
    return None


def explain_chain(tls: PortTLS, presented: Sequence[x509.Certificate], policy: Policy | None = None,
                  peer_ip: str | None = None) -> Verdict:  # fmt: skip
    """The verdict of `tls`'s port on a chain as a client would send it (leaf first),
    then of its identity rules (`policy`, the port's `allow =`) when the handshake would pass."""
    verdict = _handshake_verdict(tls, presented)
    if policy is None or not verdict.accepted:
        return verdict
    chain = verdict.chain if tls.port.client_cert is not ClientCertMode.NONE else ()
    subject = Subject(chain, peer_ip, None, None)
    notes = verdict.notes
    if policy.needs_lookup(subject):
        notes += ("the rule names client addresses: give --peer to check them (reverse DNS is not looked up here)",)
    try:
        decision = policy.check(subject)
    except Exception as e:  # a `call:` predicate: the server refuses when it raises
        return replace(verdict, accepted=False, refusal=Refusal(Reason.NOT_ALLOWED, 0 if chain else None,
                       _subject(chain[0]) if chain else None, f"{policy.rule}: predicate raised {type(e).__name__}: {e}"))  # fmt: skip
    if decision.allowed:
        return replace(verdict, notes=notes + (f"allowed by {policy.rule}",))
    refusal = decision.refusal(subject)
    assert refusal is not None
    return replace(verdict, accepted=False, refusal=refusal, notes=notes + (f"refused by {decision.rule}",))


def _handshake_verdict(tls: PortTLS, presented: Sequence[x509.Certificate]) -> Verdict:
    port = tls.port
    name = port.name
    if port.client_cert is ClientCertMode.NONE:
        return Verdict(
            name, True, None, tuple(presented), ("the port does not ask for a client certificate (client_cert = none)",)
        )
    if not presented:
        if port.client_cert is ClientCertMode.REQUIRE:
            r = Reason.NO_CERTIFICATE
            return Verdict(name, False, Refusal(r, None, None, r.description))
        return Verdict(name, True, None, (), ("no certificate: accepted, because client_cert = request",))
    leaf, rest = presented[0], list(presented[1:])
    # OpenSSL refuses a weak client key before it builds the chain (X509_V_ERR_EE_KEY_TOO_SMALL).
    if check_key_strength(leaf) is Reason.WEAK_KEY:
        return Verdict(
            name, False, Refusal(Reason.WEAK_KEY, 0, _subject(leaf), _openssl.verify_error_string(66)), tuple(presented)
        )
    too_long = _depth_refusal(tls, _walk(tls, leaf, rest))
    if too_long is not None:
        return Verdict(name, False, too_long, tuple(presented))
    store = tls.context.get_cert_store()
    assert store is not None
    return _verify(tls, store, presented, stale_crls_tolerated=False)


def _verify(
    tls: PortTLS, store: crypto.X509Store, presented: Sequence[x509.Certificate], *, stale_crls_tolerated: bool
) -> Verdict:
    """OpenSSL's chain verification with `store`, then our checks in callback order."""
    name = tls.port.name
    leaf, rest = presented[0], list(presented[1:])
    _openssl.set_store_purpose_ssl_client(store)
    ctx = crypto.X509StoreContext(
        store, crypto.X509.from_cryptography(leaf), [crypto.X509.from_cryptography(c) for c in rest]
    )
    try:
        verified = [c.to_cryptography() for c in ctx.get_verified_chain()]
    except crypto.X509StoreContextError as e:
        errno, depth, message = e.errors[0], e.errors[1], e.errors[2]
        cert = e.certificate.to_cryptography() if e.certificate is not None else leaf
        if errno == CRL_HAS_EXPIRED and tls.port.crl_expired is CRLExpired.TOLERATE and not stale_crls_tolerated:
            return _verify_tolerating_stale_crls(tls, presented)
        if errno in _WALK_ERRORS:
            chain = tls.trust.complete_chain(leaf, rest)
            ours = _our_checks(tls, chain, depth) if chain else None
            if ours is not None:
                return Verdict(name, False, ours, tuple(chain))
        refusal = Refusal(reason_for_verify_error(errno), depth, _subject(cert), str(message))
        return Verdict(name, False, refusal, tuple(presented))
    if stale_crls_tolerated:
        revoked = _revocation(tls, verified)
        if revoked is not None:
            return Verdict(name, False, revoked, tuple(verified))
    ours = _our_checks(tls, verified, -1)
    if ours is not None:
        return Verdict(name, False, ours, tuple(verified))
    notes = (
        ("a CRL of the chain is past its nextUpdate; tolerated (crl_expired = tolerate)",)
        if stale_crls_tolerated
        else ()
    )
    return Verdict(name, True, None, tuple(verified), notes)


def _verify_tolerating_stale_crls(tls: PortTLS, presented: Sequence[x509.Certificate]) -> Verdict:
    """crl_expired = tolerate: the handshake overrides only "CRL has expired", so verify
    without CRLs and look the chain up in the (stale) CRLs as OpenSSL would."""
    store = crypto.X509Store()
    for ca in tls.trust.cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    return _verify(tls, store, presented, stale_crls_tolerated=True)


def _revocation(tls: PortTLS, verified: Sequence[x509.Certificate]) -> Refusal | None:
    """The CRL check OpenSSL makes (leaf first; every CA too with crl_check = chain)."""
    depths = range(len(verified) - 1) if tls.port.crl_check is CRLCheck.CHAIN else range(min(1, len(verified) - 1))
    for depth in depths:
        cert = verified[depth]
        crls = [c for c in tls.trust.crls if c.issuer == cert.issuer]
        if not crls:
            r = reason_for_verify_error(3)
            return Refusal(r, depth, _subject(cert), _openssl.verify_error_string(3))
        if any(c.get_revoked_certificate_by_serial_number(cert.serial_number) is not None for c in crls):
            return Refusal(Reason.REVOKED, depth, _subject(cert), _openssl.verify_error_string(23))
    return None


def _walk(tls: PortTLS, leaf: x509.Certificate, rest: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The chain as OpenSSL builds it (trusted issuers first), as far as it goes."""
    chain, _ = walk_chain(
        leaf,
        lambda c: [ca for ca in tls.trust.cas if ca.subject == c.issuer],
        lambda c: [i for i in rest if i.subject == c.issuer],
        steps=63,
    )
    return chain


def _depth_refusal(tls: PortTLS, verified: Sequence[x509.Certificate]) -> Refusal | None:
    """OpenSSL's verify depth, which lives in the Context, not in the store.

    OpenSSL allows `depth` certificates between the leaf and the trust anchor and
    reports X509_V_ERR_CERT_CHAIN_TOO_LONG (22) at the first certificate past it.
    """
    limit = tls.port.verify_depth
    if limit is None or len(verified) <= limit + 2:
        return None
    depth = limit + 1
    cert = verified[depth]
    reason = reason_for_verify_error(22)
    return Refusal(reason, depth, _subject(cert), _openssl.verify_error_string(22))


def load_client_chain(path: Path, password: bytes | None = None) -> list[x509.Certificate]:
    """What a client holds, leaf first: PEM (the leaf, then its intermediates), DER (one
    certificate) or PKCS#12 (its certificate, then the others it carries).  An empty file
    stands for a client that sends no certificate.  Anything else is one MaterialError line.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MaterialError(f"cannot read it: {e.strerror or e}") from None
    if not data.strip():
        return []
    if is_pem(data):
        return load_certificates(path)
    try:
        return parse_certificates(data)  # DER: one certificate
    except ValueError:
        pass
    try:
        _, cert, others = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        if password is None:
            raise MaterialError(
                "neither a PEM or DER certificate nor a PKCS#12 file without a password "
                "(for a protected .p12, name the variable holding its password with --password-env)"
            ) from None
        raise MaterialError("neither a PEM or DER certificate nor a PKCS#12 file this password opens") from None
    except Exception as e:  # noqa: BLE001  unsupported PKCS#12 algorithms and the like: one line, no traceback
        raise MaterialError(f"an unreadable PKCS#12 file ({type(e).__name__})") from None
    if cert is None:
        raise MaterialError("a PKCS#12 file without a certificate")
    return [cert, *(c for c in others if c != cert)]


def _port_certificates(defs: Definitions) -> list[x509.Certificate]:
    """Every certificate the definition file names (CAs and server chains): where a missing
    intermediate can be found."""
    found: list[x509.Certificate] = []
    for port in defs.ports:
        for path in (*port.addca, *((port.certificate,) if port.certificate else ())):
            try:
                found.extend(c for c in load_certificates(Path(path)) if c not in found)
            except (MaterialError, OSError):
                continue
    return found


def missing_intermediate(
    tls: PortTLS, presented: Sequence[x509.Certificate], known: Sequence[x509.Certificate]
) -> str | None:
    """A note when the leaf's issuer is not a CA of the port, the client did not send it, and
    a certificate the port has (its own chain, the file's CAs) would complete the chain."""
    if not presented:
        return None
    leaf = presented[0]
    if any(ca.subject == leaf.issuer for ca in tls.trust.cas) or any(c.subject == leaf.issuer for c in presented[1:]):
        return None
    pool = [*tls.material.chain, *known]
    for issuer in (c for c in pool if c.subject == leaf.issuer and issued_by(leaf, c)):
        chain = tls.trust.complete_chain(issuer, pool)
        if chain:
            return (
                f"missing intermediate: the leaf's issuer {issuer.subject.rfc4514_string()} is not a CA of this port, "
                f"but it chains to {chain[-1].subject.rfc4514_string()}, which is: the client must send it after its "
                "certificate (a PEM file with the leaf, then the intermediate; openssl s_client sends only the "
                "-cert leaf unless given -cert_chain FILE)"
            )
    return None


def explain(
    definitions: Definitions | str | Path,
    port: str,
    client_pem: str | Path,
    peer_ip: str | None = None,
    password: bytes | None = None,
    ask_ocsp: bool = False,
) -> Verdict:
    """The verdict of a port of a definition file on the chain in a PEM, DER or PKCS#12 file
    (leaf first), with notes on a missing intermediate and on CAs and CRLs that collide.

    On a port with `ocsp`: notes say which responder would be asked about which certificate
    (or that there is none, and what `ocsp_fail` does then).  Nothing is fetched unless
    `ask_ocsp`: then every responder is asked (Twisted's client, run to completion, each
    bounded by `ocsp_timeout`) and the answers decide as they would at a handshake.
    """

    defs = definitions if isinstance(definitions, Definitions) else load_definitions(definitions)
    definition = defs.port(port)
    tls = build_port_tls(definition)
    policy = build_policy(definition, defs.procs)
    path = Path(client_pem)
    certs = load_client_chain(path, password)
    verdict = explain_chain(tls, certs, policy, peer_ip)
    notes = list(verdict.notes)
    if verdict.refusal is not None and verdict.refusal.reason is Reason.UNKNOWN_CA:
        hint = missing_intermediate(tls, certs, _port_certificates(defs))
        if hint is not None:
            notes.append(hint)
    notes += [f"warning: {w}" for w in port_trust_warnings(definition, tls.trust, [*verdict.chain, *certs])]
    verdict = replace(verdict, notes=tuple(notes))
    if definition.ocsp is not OCSPScope.NONE:
        verdict = _ocsp(definition, verdict, ask_ocsp)
    return verdict


def _ocsp(definition: PortDefinition, verdict: Verdict, ask: bool) -> Verdict:
    """What OCSP would be asked about an accepted chain, and with `ask` what it answers."""
    scope = definition.ocsp.value
    fail = definition.ocsp_fail.value
    notes = list(verdict.notes)
    if not verdict.accepted or len(verdict.chain) < 2:
        if verdict.accepted:
            notes.append(f"OCSP ({scope}): no certificate to ask about")
        return replace(verdict, notes=tuple(notes))
    pairs = asked_about(verdict.chain, scope)
    for depth, (cert, _) in enumerate(pairs):
        url = definition.ocsp_responder or responder_url(cert)
        if url is None:
            notes.append(f"OCSP ({scope}): [{depth}] names no responder and ocsp_responder is not set: "
                         f"no answer, ocsp_fail = {fail} {'refuses' if fail == 'refuse' else 'admits'}")  # fmt: skip
        else:
            notes.append(f"OCSP ({scope}): [{depth}] would be asked of {url}")
    if not ask:
        notes.append("OCSP: not asked (add --ocsp to ask the responders now); the verdict above is before OCSP")
        return replace(verdict, notes=tuple(notes))
    checker = OCSPChecker(definition, None)
    answers = run_to_completion(lambda reactor: _ask(checker, reactor, verdict.chain))
    for depth, url, v in answers:
        if url:
            notes.append(f"OCSP answer: [{depth}] {v.status.value}: {v.cause}"
                         + (f" (until {v.expires:%Y-%m-%d %H:%M} UTC)" if v.expires and v.status is not OCSPStatus.UNAVAILABLE else ""))  # fmt: skip
    refusal = checker.decide(list(verdict.chain), list(answers))
    if refusal is not None:
        return replace(verdict, accepted=False, refusal=refusal, notes=tuple(notes))
    return replace(verdict, notes=tuple(notes))


def _ask(checker: OCSPChecker, reactor: Any, chain: Sequence[x509.Certificate]) -> Any:
    checker.reactor = reactor
    return checker.ask_all(chain)


def format_verdict(v: Verdict) -> str:
    """The verdict for a person: the outcome, the reason, and the chain."""
    lines: list[str] = []
    if v.accepted:
        lines.append(f"port {v.port}: ACCEPTED")
    else:
        assert v.refusal is not None
        r = v.refusal
        lines.append(f"port {v.port}: REFUSED ({r.reason.value}, log event {r.reason.event_id})")
        lines.append(f"  why      {r.reason.description}")
        if r.depth is not None:
            lines.append(f"  where    depth {r.depth}: {r.subject}")
        if r.detail and r.detail != r.reason.description:
            lines.append(f"  OpenSSL  {r.detail}")
    for note in v.notes:
        lines.append(f"  note     {note}")
    for depth, cert in enumerate(v.chain):
        lines.append(
            f"  [{depth}] {_subject(cert)}  (issuer {cert.issuer.rfc4514_string()}, "
            f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    return "\n".join(lines) + "\n"
