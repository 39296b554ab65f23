"""Identity rules (`allow = ...`): which verified clients a port or a web rule lets in.

Pure: no reactor, no sockets, no DNS.  A policy is parsed once (at build time, errors
as located ConfigErrors) and evaluated against a `Subject`: the verified chain plus
what the adapter knows about the client's address (its IP, and the names a
forward-confirmed reverse lookup gave, which the adapter does itself when
`Policy.uses_peer` says so).

Syntax (documented in docs/web-rules.md): terms are `KIND:VALUE` (or a bare word),
separated by whitespace or `|` (any one may match: OR); `&` joins terms that must all
match (AND, binds tighter than `|`).  Quote a value containing spaces, `|`, `&` or
backslashes with single quotes: `allow = dn:'^CN=[a-z]+,OU=eng,.*$' | cn:alice & ou:ops`.

    anyone / *                 everyone, with or without a certificate
    cert                       any client with a verified certificate
    dn:REGEX                   the subject DN (RFC 4514, CN first) matches REGEX in full
    cn:NAME  ou:NAME  o:NAME   a subject attribute equals NAME (`*` matches any run of characters)
    dns:PATTERN                a DNS SAN; `*` is one label, `**` one or more labels
    email:PATTERN              an email SAN (or subject email); `*` is any local part / one label
    uri:PATTERN                a URI SAN (SPIFFE ID); `*` is one path segment, `**` any rest
    ip:ADDRESS[/PREFIX]        an IP SAN equals the address or lies in the network
    sha256:HEX                 the certificate's SHA-256 fingerprint (colons and case ignored)
    spki:BASE64                SHA-256 of the SubjectPublicKeyInfo, base64 (curl's sha256//...)
    peer                       the client's own address is in its certificate: an IP SAN equal
                               to it, or a DNS SAN for a name its address reverse-resolves to
                               (forward-confirmed; matched with service-identity)
    call:MODULE:CALLABLE       a predicate from the procedure library: f(connection) -> bool
"""

from __future__ import annotations

import base64
import binascii
import inspect
import ipaddress
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from janustls.core.reasons import Reason, Refusal

__all__ = ["Policy", "Subject", "Verdict", "PolicyError", "parse_policy", "glob_regex", "san_pattern"]


class PolicyError(ValueError):
    """An `allow` expression that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Subject:
    """What a policy is evaluated against; built by the adapter, once per connection."""

    chain: Sequence[x509.Certificate] = ()
    peer_ip: str | None = None
    #: Forward-confirmed reverse-lookup names of peer_ip; None when not looked up.
    peer_names: Sequence[str] | None = None
    #: Passed to `call:` predicates (a janustls Connection, or a web request).
    connection: Any = None

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str
    reason: Reason | None = None

    def refusal(self, subject: Subject) -> Refusal | None:
        """The typed refusal to log or hand to a FORBIDDEN handler; None when allowed."""
        if self.allowed:
            return None
        leaf = subject.leaf
        return Refusal(
            self.reason or Reason.NOT_ALLOWED,
            0 if leaf is not None else None,
            leaf.subject.rfc4514_string() if leaf is not None else None,
            f"refused by {self.rule}",
        )


def glob_regex(pattern: str, one: str, flags: int = 0) -> re.Pattern[str]:
    """`*` = one or more characters other than `one`, `**` = one or more of anything."""
    parts = re.split(r"(\*\*|\*)", pattern)
    out = []
    for p in parts:
        if p == "**":
            out.append(".+")
        elif p == "*":
            out.append(f"[^{re.escape(one)}]+" if one else ".*")
        else:
            out.append(re.escape(p))
    return re.compile("".join(out), flags)


def san_pattern(kind: str, pattern: str) -> Callable[[str], bool]:
    """A matcher for one SAN kind with SPIFFE-style wildcards."""
    if kind == "dns":
        rx = glob_regex(pattern.rstrip(".").lower(), ".", re.IGNORECASE)
        return lambda v: rx.fullmatch(v.rstrip(".").lower()) is not None
    if kind == "email":
        local, at, domain = pattern.rpartition("@")
        if not at:
            raise PolicyError(f"email:{pattern} needs a local part and a domain (e.g. *@example.org)")
        lrx = re.compile(".+") if local in ("*", "**") else glob_regex(local, "@")
        drx = glob_regex(domain.lower(), ".", re.IGNORECASE)

        def match(v: str) -> bool:
            vl, vat, vd = v.rpartition("@")
            return bool(vat) and lrx.fullmatch(vl) is not None and drx.fullmatch(vd.lower()) is not None

        return match
    if kind == "uri":
        scheme, sep, rest = pattern.partition("://")
        if not sep:
            raise PolicyError(f"uri:{pattern} is not an absolute URI (e.g. spiffe://example.org/ns/*)")
        rx = re.compile(re.escape(scheme.lower() + "://") + glob_regex(rest, "/").pattern)
        return lambda v: rx.fullmatch(_lower_scheme(v)) is not None
    raise PolicyError(f"unknown SAN kind {kind}")


def _lower_scheme(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    return scheme.lower() + sep + rest if sep else uri


def _san_values(cert: x509.Certificate, kind: type) -> list[Any]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(kind))


def _attrs(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


class Term:
    """One `KIND:VALUE` of an expression."""

    needs_peer = False

    def __init__(self, text: str) -> None:
        self.text = text

    def match(self, s: Subject) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.text


class _Anyone(Term):
    def match(self, s: Subject) -> bool:
        return True


class _Cert(Term):
    def match(self, s: Subject) -> bool:
        return s.leaf is not None


class _Leaf(Term):
    """A term that looks at the client certificate only."""

    def __init__(self, text: str, test: Callable[[x509.Certificate], bool]) -> None:
        super().__init__(text)
        self.test = test

    def match(self, s: Subject) -> bool:
        leaf = s.leaf
        return leaf is not None and self.test(leaf)


class _Peer(Term):
    needs_peer = True

    def match(self, s: Subject) -> bool:
        leaf = s.leaf
        if leaf is None or s.peer_ip is None:
            return False
        try:
            verify_certificate_ip_address(leaf, s.peer_ip)
            return True
        except (VerificationError, CertificateError, ValueError):  # CertificateError: no SAN at all
            pass
        for name in s.peer_names or ():
            try:
                verify_certificate_hostname(leaf, name)
                return True
            except (VerificationError, CertificateError, ValueError):
                continue
        return False

    @staticmethod
    def ip_in_certificate(leaf: x509.Certificate, ip: str) -> bool:
        """Whether the reverse lookup can be skipped: an IP SAN already equals the peer."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return addr in _san_values(leaf, x509.IPAddress)


class _Call(Term):
    def __init__(self, text: str, predicate: Callable[[Any], Any]) -> None:
        super().__init__(text)
        self.predicate = predicate

    def match(self, s: Subject) -> bool:
        result = self.predicate(s.connection)
        if not isinstance(result, bool) and (inspect.isawaitable(result) or hasattr(result, "addCallback")):
            # A Deferred is truthy: never let one allow a client.
            raise TypeError(f"{self.text} returned {type(result).__name__}; an identity predicate returns a bool")
        return bool(result)


def _hex(value: str) -> bytes:
    try:
        return binascii.unhexlify(value.replace(":", "").strip())
    except (binascii.Error, ValueError):
        raise PolicyError(f"{value!r} is not a hexadecimal SHA-256 fingerprint") from None


def _spki(cert: x509.Certificate) -> bytes:
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(hashes.SHA256())
    h.update(der)
    return h.finalize()


def _term(text: str, resolve: Callable[[str], Callable[[Any], Any]] | None) -> Term:
    lowered = text.lower()
    if lowered in ("*", "anyone"):
        return _Anyone(text)
    if lowered == "cert":
        return _Cert(text)
    if lowered in ("peer", "peer:"):
        return _Peer(text)
    kind, sep, value = text.partition(":")
    kind = kind.lower()
    if not sep or not value:
        raise PolicyError(f"{text!r} is not a term (KIND:VALUE, or anyone | cert | peer)")
    if kind == "dn":
        try:
            rx = re.compile(value)
        except re.error as e:
            raise PolicyError(f"dn:{value} is not a regular expression: {e}") from None
        return _Leaf(text, lambda c: rx.fullmatch(c.subject.rfc4514_string()) is not None)
    if kind in ("cn", "ou", "o"):
        oid = {"cn": NameOID.COMMON_NAME, "ou": NameOID.ORGANIZATIONAL_UNIT_NAME, "o": NameOID.ORGANIZATION_NAME}[kind]
        rx = glob_regex(value, "")
        return _Leaf(text, lambda c: any(rx.fullmatch(v) for v in _attrs(c, oid)))
    if kind == "dns":
        m = san_pattern("dns", value)
        return _Leaf(text, lambda c: any(m(v) for v in _san_values(c, x509.DNSName)))
    if kind == "email":
        m = san_pattern("email", value)
        return _Leaf(
            text,
            lambda c: any(m(v) for v in _san_values(c, x509.RFC822Name) + _attrs(c, NameOID.EMAIL_ADDRESS)),
        )
    if kind == "uri":
        m = san_pattern("uri", value)
        return _Leaf(text, lambda c: any(m(v) for v in _san_values(c, x509.UniformResourceIdentifier)))
    if kind == "ip":
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise PolicyError(f"ip:{value} is not an IP address or network") from None
        return _Leaf(text, lambda c: any(a in net for a in _san_values(c, x509.IPAddress) if a.version == net.version))
    if kind in ("sha256", "fp", "fingerprint"):
        want = _hex(value)
        if len(want) != 32:
            raise PolicyError(f"{kind}:{value} is not 32 bytes (a SHA-256 fingerprint is 64 hex digits)")
        return _Leaf(text, lambda c: c.fingerprint(hashes.SHA256()) == want)
    if kind == "spki":
        b64 = value[len("sha256//") :] if value.startswith("sha256//") else value
        try:
            pin = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise PolicyError(f"spki:{value} is not base64 (the SHA-256 of the SubjectPublicKeyInfo)") from None
        if len(pin) != 32:
            raise PolicyError(f"spki:{value} is not a SHA-256 pin (32 bytes, 44 base64 characters)")
        return _Leaf(text, lambda c: _spki(c) == pin)
    if kind == "call":
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$", value):
            raise PolicyError(f"call:{value} is not MODULE:CALLABLE")
        if resolve is None:
            raise PolicyError(f"call:{value}: predicates need a procedure library")
        try:
            predicate = resolve(value)
        except Exception as e:
            raise PolicyError(f"call:{value}: {e}") from None
        return _Call(text, predicate)
    raise PolicyError(
        f"{kind}: is not a kind of identity term (dn cn ou o dns email uri ip sha256 spki peer call, anyone, cert)"
    )


@dataclass(frozen=True)
class Policy:
    """An OR of AND-groups of terms, with the text it came from (named in refusals)."""

    source: str
    groups: tuple[tuple[Term, ...], ...]
    #: Where the expression was written, e.g. "[port:SECURE] allow" (for logs).
    where: str = "allow"
    uses_peer: bool = field(default=False)

    @property
    def rule(self) -> str:
        return f"{self.where} = {self.source}"

    def check(self, subject: Subject) -> Verdict:
        for group in self.groups:
            if all(t.match(subject) for t in group):
                return Verdict(True, self.rule)
        reason = Reason.NOT_ALLOWED if subject.leaf is not None else Reason.NO_CERTIFICATE
        return Verdict(False, self.rule, reason)

    def matches(self, subject: Subject) -> bool:
        """Whether any alternative matches (DISALLOW rules use this directly)."""
        return any(all(t.match(subject) for t in g) for g in self.groups)

    def needs_lookup(self, subject: Subject) -> bool:
        """Whether the adapter should reverse-resolve the peer before `check`."""
        leaf = subject.leaf
        return (
            self.uses_peer
            and leaf is not None
            and subject.peer_ip is not None
            and subject.peer_names is None
            and not _Peer.ip_in_certificate(leaf, subject.peer_ip)
        )


def parse_policy(
    text: str,
    where: str = "allow",
    resolve: Callable[[str], Callable[[Any], Any]] | None = None,
) -> Policy:
    """Parse an `allow` expression; PolicyError with what is wrong."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars="|&")
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
    except ValueError as e:
        raise PolicyError(f"cannot be read: {e} (unbalanced quotes?)") from None
    if not tokens:
        raise PolicyError("is empty; give at least one term (e.g. cn:alice, or anyone)")
    groups: list[list[Term]] = [[]]
    expect_term = True
    for tok in tokens:
        if tok in ("|", "||"):
            if expect_term:
                raise PolicyError(f"{tok!r} needs a term on each side")
            groups.append([])
            expect_term = True
        elif tok in ("&", "&&"):
            if expect_term:
                raise PolicyError(f"{tok!r} needs a term on each side")
            expect_term = True
        elif set(tok) <= {"|", "&"}:
            raise PolicyError(f"{tok!r} is not an operator (use | or &)")
        else:
            if not expect_term:  # whitespace between terms: a new alternative
                groups.append([])
            groups[-1].append(_term(tok, resolve))
            expect_term = False
    if expect_term:
        raise PolicyError("ends with an operator; a term must follow it")
    frozen = tuple(tuple(g) for g in groups)
    return Policy(text.strip(), frozen, where, any(t.needs_peer for g in frozen for t in g))
