"""A pyOpenSSL Context per port, the connection creator Twisted calls, and the verify callback.

The creator holds the port's current Context; replacing it (a reload) affects only
new connections, because pyOpenSSL forbids changing a Context once it has been used.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from janustls.core.certinfo import EMPTY_CHAIN, CertChain
from janustls.core.config import ClientCertMode, CRLCheck, CRLExpired, PortDefinition
from janustls.core.materials import ServerMaterial, load_server_material
from janustls.core.reasons import Reason, Refusal, reason_for_verify_error
from janustls.core.trust import PortTrust, load_port_trust
from janustls.errors import ConfigError, ConfigErrors, MaterialError
from janustls.tls import _hidden, _openssl, tickets
from janustls.tls.protocol import PortTLSProtocol

__all__ = ["PortTLS", "build_port_tls", "DEFAULT_CIPHERS"]

#: AEAD suites with forward secrecy only (TLS 1.2; TLS 1.3 suites are all AEAD).
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_VERIFY_MODES = {
    ClientCertMode.NONE: SSL.VERIFY_NONE,
    ClientCertMode.REQUEST: SSL.VERIFY_PEER,
    ClientCertMode.REQUIRE: SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}
_CHECK_CACHE_SIZE = 2048
#: X509_V_ERR_CRL_HAS_EXPIRED: the one error `crl_expired = tolerate` overrides.
CRL_HAS_EXPIRED = 12


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | Any:
    """ALPN on a webserv port with http2 = yes: h2 when the client offers it, else http/1.1;
    a client offering neither gets no ALPN answer (and HTTP/1.1, as without ALPN)."""
    if b"h2" in offered:
        return b"h2"
    if b"http/1.1" in offered:
        return b"http/1.1"
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "<unparsable subject>"


@implementer(IOpenSSLServerConnectionCreator)
class PortTLS:
    """One port's TLS policy: builds its Context and makes a connection per client."""

    def __init__(self, port: PortDefinition, material: ServerMaterial, trust: PortTrust, *,
                 tolerate_missing: bool = False, tolerate_refused: bool = False) -> None:  # fmt: skip
        self.port = port
        self.tolerate_missing = tolerate_missing
        self.tolerate_refused = tolerate_refused
        self.material = material
        self.trust = trust
        self._checked: dict[tuple[bytes, int], Reason | None] = {}
        # Per-handshake work done once per distinct certificate or chain, not per
        # connection: parsed certificates by DER, and verified chains (shared, with
        # their cert_info cache) by the DERs of the chain and by the leaf's DER (a
        # resumed session has the leaf only).  Bounded like `_checked`.
        self._certs: dict[bytes, x509.Certificate] = {}
        self._chains: dict[tuple[bytes, ...], CertChain] = {}
        #: leaf DER -> (its chain, the window every certificate of it is valid in, as timestamps)
        self._by_leaf: dict[bytes, tuple[CertChain, float, float]] = {}
        self.context = self._build_context()

    #: Given by webserv ports with exception rules (`janustls.ports.web.port.WebRules.tolerance`):
    #: a `require` port with ON SSLNOCERTERR only requests, the web layer enforces; with ON
    #: SSLCERTERR a refused certificate is recorded (`PortTLSProtocol.refusal`), the handshake
    #: finishes without it, and the web layer answers with the typed reason.
    tolerate_missing = False
    tolerate_refused = False

    # The verify mode the port asks for at the handshake.
    @property
    def verify_mode(self) -> int:
        if self.tolerate_missing and self.port.client_cert is ClientCertMode.REQUIRE:
            return SSL.VERIFY_PEER
        return _VERIFY_MODES[self.port.client_cert]

    def _build_context(self) -> SSL.Context:
        port = self.port
        self._by_leaf.clear()  # sessions of a new Context were verified by it
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_VERSIONS[port.tls_min])
        ctx.set_max_proto_version(_VERSIONS[port.tls_max])
        ctx.set_options(
            SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | _openssl.OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION
        )
        # Idle connections give their read and write buffers back to OpenSSL (about 20 KiB
        # per idle connection). Set on the Context, from the first record: set only once the
        # handshake was done, idle connections measured 56 KiB instead of 35.
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        try:
            ctx.set_cipher_list((port.ciphers or DEFAULT_CIPHERS).encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as e:
            raise ConfigErrors([ConfigError(port.source, port.section, "ciphers", f"no usable TLS 1.2 cipher: {e}")])
        ctx.use_certificate(self.material.leaf)
        for extra in self.material.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(self.material.key)
        ctx.check_privatekey()
        ctx.set_session_id(hashlib.sha256(f"janustls:{port.name}".encode()).digest()[:32])
        if not port.session_cache or self.tolerate_refused:  # a refused client must not resume
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_options(SSL.OP_NO_TICKET)
        else:
            if tickets.apply(ctx, port.name):  # keys shared by workers and machines, when configured
                # Another process may resume this session: put the client's intermediates in
                # the ticket so it can name the issuers (a Python callback per ticket, so
                # only when tickets are shared).
                _hidden.keep_chain_in_tickets(ctx)
        store = ctx.get_cert_store()
        assert store is not None
        # The store keeps these very X509 objects and OpenSSL hands them to the verify
        # callback as they are: held here, their pointers stay theirs, and the callback
        # knows their DER without encoding them on every handshake.
        self._store_certs: list[crypto.X509] = []
        self._store_der: dict[Any, bytes] = {}
        for ca in self.trust.cas:
            held = crypto.X509.from_cryptography(ca)
            store.add_cert(held)
            self._store_certs.append(held)
            self._store_der[_openssl.x509_pointer(held)] = ca.public_bytes(serialization.Encoding.DER)
            ctx.add_client_ca(ca)
        for crl in self.trust.crls:
            store.add_crl(crl)
        if self.trust.has_intermediate_anchor:
            # An intermediate added without its root is a trust anchor (Janus ADDCA); OpenSSL
            # needs this flag for that.  Only then: it also ends every chain at the first
            # added CA, which would shorten chains whose root is added too.
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        if self.trust.crls or self.trust.crl_pending:
            flags = crypto.X509StoreFlags.CRL_CHECK
            if self.trust.crl_check is CRLCheck.CHAIN:
                flags |= crypto.X509StoreFlags.CRL_CHECK_ALL
            store.set_flags(flags)
        if port.verify_depth is not None:
            # OpenSSL counts intermediates; ours counts the anchor too, so allow one
            # more here and let `PortTrust.check` give the precise verdict.
            ctx.set_verify_depth(port.verify_depth)
        ctx.set_verify(self.verify_mode, self.verify)
        if port.ocsp_staple:
            ctx.set_ocsp_server_callback(self._staple)
        if port.http2:
            ctx.set_alpn_select_callback(_select_alpn)
        return ctx

    #: The current OCSP response to staple (`janustls.ops.staple.Stapler.current`), set when the port is built.
    staple_source: Callable[[], bytes] | None = None

    def _staple(self, connection: SSL.Connection, data: Any) -> bytes:
        """OpenSSL asks for a staple (the client sent status_request): the current one, or none."""
        source = self.staple_source
        return source() if source is not None else b""

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        # The verify callback finds its connection's state here (newer Twisted sets the
        # same app data itself; older releases do not).
        connection.set_app_data(tlsProtocol)
        return connection

    def verify(self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        """OpenSSL's verdict on each certificate, plus ours; the first failure is kept."""
        if not ok:
            if errno == CRL_HAS_EXPIRED and self.port.crl_expired is CRLExpired.TOLERATE:
                return True  # a stale CRL is still checked (janustls.ops.crlwatch logs that it is stale)
            state: PortTLSProtocol = _openssl.tls_protocol_of(connection)
            if state.refusal is None:
                state.refusal = Refusal(
                    reason_for_verify_error(errno),
                    depth,
                    _subject(cert.to_cryptography()),
                    _openssl.verify_error_string(errno),
                )
            return self.tolerate_refused
        der = _openssl.certificate_der(cert, self._store_der)
        try:
            reason = self._checked[(der, depth)]
        except KeyError:
            reason = self._check(der, depth)
        if reason is not None:
            state = _openssl.tls_protocol_of(connection)
            if state.refusal is None:
                state.refusal = Refusal(
                    reason, depth, _subject(x509.load_der_x509_certificate(der)), reason.description
                )
            return self.tolerate_refused
        if depth == 0:
            connection.get_app_data().leaf_der = der  # the TLS protocol (`serverConnectionForTLS`)
        return True

    def _check(self, der: bytes, depth: int) -> Reason | None:
        """janustls's own checks of one certificate at its depth (`PortTrust.check`), cached.

        The one judgement of a certificate: the verify callback asks it during a full
        handshake, `_judge_resumed` for each certificate of a resumed session.
        """
        key = (der, depth)
        try:
            return self._checked[key]
        except KeyError:
            pass
        reason = self.trust.check(self._parsed(der), len(der), depth)
        if len(self._checked) >= _CHECK_CACHE_SIZE:
            self._checked.clear()
        self._checked[key] = reason
        return reason

    def _judge_resumed(self, certs: list[x509.Certificate], *, revocation: bool) -> tuple[Reason, int] | None:
        """A resumed session's chain judged as a fresh handshake would judge it now.

        OpenSSL verifies nothing when a session resumes.  Each certificate goes through
        `_check` (size, depth, key strength, usage: what the verify callback applies),
        then `PortTrust.resumed_problem` does what OpenSSL does on a full handshake:
        dates, CRL presence and freshness (`crl_expired`), revocation.
        """
        for depth, cert in enumerate(certs):
            reason = self._check(cert.public_bytes(serialization.Encoding.DER), depth)
            if reason is not None:
                return reason, depth
        return self.trust.resumed_problem(certs, revocation=revocation)

    def verified_chain(self, connection: SSL.Connection) -> list[x509.Certificate]:
        """The client's chain, leaf to anchor; rebuilt for a resumed session; [] without one."""
        return list(self.client_chain(connection).certificates)

    def client_chain(self, connection: SSL.Connection, tls: PortTLSProtocol | None = None) -> CertChain:
        """The client's verified chain as a `CertChain`, shared by connections with the same chain.

        A resumed session has the client's leaf but not the chain OpenSSL verified; the
        chain this Context verified for that leaf is used, else `PortTrust.complete_chain`
        rebuilds it.  EMPTY_CHAIN without a certificate.  `tls`: the connection's TLS
        protocol, when the caller has it.
        """
        if tls is None:
            tls = _openssl.tls_protocol_of(connection)
        if self.tolerate_refused and tls.refusal is not None:
            return EMPTY_CHAIN  # recorded, never verified: the web layer answers SSLCERTERR
        leaf_der, tls.leaf_der = tls.leaf_der, None
        if leaf_der is not None:
            # This Context verified a chain for this very certificate before: the same
            # identity, without reading the chain out of OpenSSL again.
            known = self._by_leaf.get(leaf_der)
            if known is not None:
                return known[0]
        ders = _openssl.verified_chain_der(connection)
        if ders:
            key = tuple(ders)
            chain = self._chains.get(key)
            if chain is None:
                chain = CertChain([self._parsed(der) for der in ders])
                if len(self._chains) >= _CHECK_CACHE_SIZE:
                    self._chains.clear()
                self._chains[key] = chain
                self._remember_leaf(ders[0], chain)
            return chain
        # A resumed session: OpenSSL verified its certificate when the session was made,
        # perhaps under another Context (shared ticket keys survive a reload).  Judge it
        # again under this one: a refusal is recorded and the port protocol closes.
        leaf_der = _openssl.peer_certificate_der(connection)
        if leaf_der is None:
            return EMPTY_CHAIN
        known = self._by_leaf.get(leaf_der)
        if known is not None:
            # Verified by this Context (same CAs and CRLs): dates, CRL freshness and the
            # per-certificate checks may still have changed their verdict since.
            chain, valid_from, valid_until = known
            if valid_from <= time.time() <= valid_until and not self.trust.crls:
                return chain  # nothing of the verdict can have changed
            certs = list(chain.certificates)
            problem = self._judge_resumed(certs, revocation=False)
        else:
            leaf = self._parsed(leaf_der)
            rest = connection.get_peer_cert_chain(as_cryptography=True) or []
            rest += [self._parsed(der) for der in _hidden.ticket_chain_der(connection)]
            certs = self.trust.complete_chain(leaf, [c for c in rest if c != leaf])
            if not certs:
                tls.refusal = Refusal(
                    Reason.UNKNOWN_CA, 0, _subject(leaf), "a resumed session's certificate chains to no CA of this port"
                )
                return EMPTY_CHAIN
            problem = self._judge_resumed(certs, revocation=True)
        if problem is not None:
            reason, depth = problem
            tls.refusal = Refusal(reason, depth, _subject(certs[depth]), f"{reason.description} (resumed session)")
            return EMPTY_CHAIN
        if known is not None:
            return known[0]
        chain = CertChain(certs)
        self._remember_leaf(leaf_der, chain)
        return chain

    def _parsed(self, der: bytes) -> x509.Certificate:
        cert = self._certs.get(der)
        if cert is None:
            cert = x509.load_der_x509_certificate(der)
            if len(self._certs) >= _CHECK_CACHE_SIZE:
                self._certs.clear()
            self._certs[der] = cert
        return cert

    def _remember_leaf(self, der: bytes, chain: CertChain) -> None:
        if len(self._by_leaf) >= _CHECK_CACHE_SIZE:
            self._by_leaf.clear()
        certs = chain.certificates
        valid_from = max(c.not_valid_before_utc for c in certs).timestamp()
        valid_until = min(c.not_valid_after_utc for c in certs).timestamp()
        self._by_leaf[der] = (chain, valid_from, valid_until)


def build_port_tls(port: PortDefinition, *, tolerate_missing: bool = False, tolerate_refused: bool = False) -> PortTLS:
    """Load a port's files and build its TLS policy; all problems as located ConfigErrors.

    `tolerate_*`: what a webserv port's exception rules leave to the web layer (`PortTLS`)."""
    errors: list[ConfigError] = []
    material: ServerMaterial | None = None
    try:
        material = load_server_material(port.certificate, port.private_key, port.private_key_password_env)
    except MaterialError as e:
        errors.append(ConfigError(port.source, port.section, e.key or "certificate", e.message))
    trust: PortTrust | None = None
    try:
        trust = load_port_trust(port, material.chain if material else ())
    except ConfigErrors as e:
        errors.extend(e.errors)
    if errors:
        raise ConfigErrors(errors)
    assert material is not None and trust is not None
    try:
        return PortTLS(port, material, trust, tolerate_missing=tolerate_missing, tolerate_refused=tolerate_refused)
    except SSL.Error as e:
        raise ConfigErrors([ConfigError(port.source, port.section, "certificate", f"OpenSSL refused it: {e}")])
