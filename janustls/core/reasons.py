"""Why a client was refused: typed reasons, from OpenSSL's verification errors and our own checks.

Pure.  Each reason has a stable log event identifier (`janustls.refused.<value>`), so
logs, metrics and web error handlers all speak of the same thing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Reason", "Refusal", "reason_for_verify_error"]


class Reason(str, enum.Enum):
    NO_CERTIFICATE = "no_certificate"
    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    WRONG_USAGE = "wrong_usage"
    CHAIN_TOO_LONG = "chain_too_long"
    TOO_LARGE = "too_large"
    WEAK_KEY = "weak_key"
    SERVER_CERTIFICATE = "server_certificate"
    BAD_SIGNATURE = "bad_signature"
    CRL_UNAVAILABLE = "crl_unavailable"
    OCSP_UNAVAILABLE = "ocsp_unavailable"
    NOT_ALLOWED = "not_allowed"
    INVALID = "invalid"

    @property
    def event_id(self) -> str:
        return f"janustls.refused.{self.value}"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Reason.NO_CERTIFICATE: "the client sent no certificate where one is required",
    Reason.UNKNOWN_CA: "the certificate does not chain to a CA added to this port",
    Reason.EXPIRED: "a certificate in the chain has expired",
    Reason.NOT_YET_VALID: "a certificate in the chain is not valid yet",
    Reason.REVOKED: "a certificate in the chain is revoked",
    Reason.WRONG_USAGE: "the certificate is not for client authentication (extended key usage)",
    Reason.CHAIN_TOO_LONG: "the chain is longer than the port's verify_depth",
    Reason.TOO_LARGE: "a certificate is larger than the port's max_cert_size",
    Reason.WEAK_KEY: "the certificate's key is too weak (RSA under 2048 bits, DSA)",
    Reason.SERVER_CERTIFICATE: "the client presented this server's own certificate",
    Reason.BAD_SIGNATURE: "a signature in the chain does not verify",
    Reason.CRL_UNAVAILABLE: "no usable CRL for a certificate of the chain (missing, expired, not yet valid)",
    Reason.OCSP_UNAVAILABLE: "no usable OCSP answer for a certificate of the chain (responder unreachable, "
    "a response that does not verify, stale, or unknown) and ocsp_fail = refuse",
    Reason.NOT_ALLOWED: "the certificate is trusted but an identity rule does not allow it",
    Reason.INVALID: "the certificate chain is invalid",
}

# OpenSSL X509_V_ERR_* numbers (stable across OpenSSL versions).
_VERIFY_ERRORS: dict[int, Reason] = {
    2: Reason.UNKNOWN_CA,  # unable to get issuer certificate
    3: Reason.CRL_UNAVAILABLE,  # unable to get CRL
    4: Reason.BAD_SIGNATURE,
    5: Reason.BAD_SIGNATURE,
    6: Reason.BAD_SIGNATURE,
    7: Reason.BAD_SIGNATURE,  # certificate signature failure
    8: Reason.BAD_SIGNATURE,  # CRL signature failure
    9: Reason.NOT_YET_VALID,
    10: Reason.EXPIRED,
    11: Reason.CRL_UNAVAILABLE,  # CRL not yet valid
    12: Reason.CRL_UNAVAILABLE,  # CRL has expired
    13: Reason.INVALID,
    14: Reason.INVALID,
    18: Reason.UNKNOWN_CA,  # self-signed leaf
    19: Reason.UNKNOWN_CA,  # self-signed certificate in chain
    20: Reason.UNKNOWN_CA,  # unable to get local issuer certificate
    21: Reason.UNKNOWN_CA,  # unable to verify the first certificate
    22: Reason.CHAIN_TOO_LONG,
    23: Reason.REVOKED,
    24: Reason.WRONG_USAGE,  # invalid CA certificate (CA:FALSE used as a signer)
    25: Reason.CHAIN_TOO_LONG,  # path length constraint exceeded
    26: Reason.WRONG_USAGE,  # unsupported certificate purpose
    28: Reason.WRONG_USAGE,  # certificate rejected (by trust settings)
    66: Reason.WEAK_KEY,  # EE key too small
    67: Reason.WEAK_KEY,  # CA key too small
    68: Reason.WEAK_KEY,  # CA md too weak
}


def reason_for_verify_error(errno: int) -> Reason:
    """The typed reason for an OpenSSL X509_V_ERR number."""
    return _VERIFY_ERRORS.get(errno, Reason.INVALID)


@dataclass(frozen=True)
class Refusal:
    """A refused client certificate: the reason, and which certificate was at fault."""

    reason: Reason
    depth: int | None = None
    subject: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        text = self.reason.value
        if self.depth is not None:
            text += f" at depth {self.depth}"
        if self.subject:
            text += f" ({self.subject})"
        if self.detail:
            text += f": {self.detail}"
        return text
