"""TLS session ticket keys shared by processes and machines, from a file the operator rotates.

OpenSSL makes a random ticket key per Context, so a session ticket issued by one
worker process (or one machine behind a load balancer) cannot be resumed by another.
With a ticket key file every port's Context gets keys derived from it (HKDF with the
port's name, so ports never accept each other's tickets), and any process reading
the same file resumes any other's sessions.  Rotating: write a new file and reload;
tickets under the old key then end in a full handshake, never in an error.

The file holds at least 32 random bytes (e.g. `head -c 80 /dev/urandom > ticket.key`),
raw, or as hex or base64 text.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from OpenSSL import SSL

from janustls.errors import MaterialError
from janustls.tls import _hidden

__all__ = ["ENV_KEY_FILE", "load_master", "port_keys", "configure", "configure_from_env", "apply", "active"]

#: Worker processes learn the key file from their parent through this variable.
ENV_KEY_FILE = "JANUSTLS_TICKET_KEY_FILE"
MIN_KEY_BYTES = 32

_master: bytes | None = None
_source: str | None = None


def load_master(path: str | os.PathLike[str]) -> bytes:
    """The secret in a ticket key file; MaterialError when it is missing or too short."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MaterialError(f"ticket key file {p}: {e.strerror or e}")
    text = data.strip()
    secret = data
    if re.fullmatch(rb"[0-9a-fA-F\s]+", text) and len(re.sub(rb"\s", b"", text)) >= 2 * MIN_KEY_BYTES:
        secret = binascii.unhexlify(re.sub(rb"\s", b"", text))
    elif re.fullmatch(rb"[A-Za-z0-9+/=\s]+", text):
        try:
            decoded = base64.b64decode(re.sub(rb"\s", b"", text), validate=True)
        except binascii.Error:
            decoded = b""
        if len(decoded) >= MIN_KEY_BYTES:
            secret = decoded
    if len(secret) < MIN_KEY_BYTES:
        raise MaterialError(
            f"ticket key file {p} holds {len(secret)} bytes; at least {MIN_KEY_BYTES} random bytes are needed"
        )
    return secret


def port_keys(master: bytes, port_name: str) -> bytes:
    """The 80 bytes of ticket keys (name, HMAC, AES) of one port."""
    return HKDF(algorithm=hashes.SHA256(), length=_hidden.TICKET_KEYS_SIZE, salt=None,
                info=b"janustls session tickets " + port_name.upper().encode()).derive(master)  # fmt: skip


def configure(path: str | os.PathLike[str] | None) -> None:
    """Use this key file for every Context built from now on (None: OpenSSL's own per-Context keys)."""
    global _master, _source
    if path is None:
        _master = _source = None
        return
    master = load_master(path)
    if not _hidden.ticket_keys_supported():
        raise MaterialError("this OpenSSL build gives no way to set session ticket keys (see janustls.tls._hidden)")
    _master, _source = master, str(path)


def configure_from_env() -> None:
    """Worker processes: the key file their parent named in JANUSTLS_TICKET_KEY_FILE."""
    path = os.environ.get(ENV_KEY_FILE)
    if path:
        configure(path)


def reload_master() -> None:
    """Read the configured file again (the operator rotated it); kept as it was on error."""
    if _source is not None:
        configure(_source)


def active() -> str | None:
    """The key file in use, if any."""
    return _source


def apply(context: SSL.Context, port_name: str) -> bool:
    """Give a port's Context the shared keys, when a key file is configured."""
    if _master is None:
        return False
    return _hidden.set_ticket_keys(context, port_keys(_master, port_name))
