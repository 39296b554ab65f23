"""Typed exceptions, kept apart so every layer can raise and catch them without cycles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class JanusError(Exception):
    """Base class of every error janustls raises on purpose."""


class ConfigError(JanusError):
    """One mistake in a port definition, located by file, section and key."""

    def __init__(self, file: str, section: str | None, key: str | None, message: str) -> None:
        self.file = file
        self.section = section
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class ConfigErrors(JanusError):
    """Every mistake found in one definition file; nothing starts while there is one."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: Sequence[ConfigError] = tuple(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in the port definitions:"
        return "\n".join([head] + [f"  {e}" for e in self.errors])


class MaterialError(JanusError):
    """A certificate, key or CRL file that cannot be used (unreadable, malformed, mismatched).

    `key`: the port-definition key to blame when the caller knows it (`certificate`,
    `private_key`, ...), so that it becomes a located ConfigError without parsing text.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        self.message = message
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key is not None else self.message


class UnknownCertItem(JanusError, ValueError):
    """`cert_info` was asked for an item outside its vocabulary."""


class LineTooLong(JanusError):
    """`readline()` found no newline within the connection's line limit."""


class CertificateRequestTimeout(JanusError):
    """The client did not answer a mid-connection certificate request in time."""


class CertificateRequestUnsupported(JanusError):
    """The installed OpenSSL bindings lack what a mid-connection request needs."""
