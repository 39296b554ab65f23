"""The one place a refused client is logged (`janustls.refused.<reason>`).

The event names the client's certificate as well as the reason: the leaf's serial (hex),
SHA-256 fingerprint and issuer, so a refusal can be investigated (and the certificate
revoked or reissued) without the client's file.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.logger import LogLevel

from janustls.core.reasons import Refusal
from janustls.events import emit

__all__ = ["log_refusal", "leaf_fields"]


def leaf_fields(leaf: x509.Certificate | None) -> dict[str, str | None]:
    """serial (hex, as `cert_info("SERIAL")`), fingerprint (SHA-256 hex) and issuer (RFC 4514)."""
    if leaf is None:
        return {"serial": None, "fingerprint": None, "issuer": None}
    try:
        issuer = leaf.issuer.rfc4514_string()
    except ValueError:
        issuer = "<unparsable issuer>"
    return {
        "serial": format(leaf.serial_number, "X"),
        "fingerprint": leaf.fingerprint(hashes.SHA256()).hex(),
        "issuer": issuer,
    }


def log_refusal(port: str, peer: str, refusal: Refusal, leaf: x509.Certificate | None, **extra: Any) -> None:
    """Emit the refusal's event: port, peer, reason, depth, subject of the certificate at
    fault, the detail (the cause in words), the leaf's serial, fingerprint and issuer (None without a certificate), and `extra`
    (the identity rule that refused, for one)."""
    fields = leaf_fields(leaf)
    text = "port {port}: refused {peer}: {refusal}"
    if leaf is not None:
        text += " [leaf serial {serial}, SHA-256 {fingerprint}, issuer {issuer}]"
    emit(
        refusal.reason.event_id,
        text,
        LogLevel.warn,
        port=port,
        peer=peer,
        refusal=refusal,
        reason=refusal.reason.value,
        depth=refusal.depth,
        subject=refusal.subject,
        detail=refusal.detail,
        **fields,
        **extra,
    )
