"""The port-definition file, read into validated immutable definitions.

Pure: this module reads the INI text and checks every value's form, but opens no
certificate and touches no reactor.  File contents (PEM, keys, CRLs) are checked by
`janustls.core.materials` when ports are built, with errors located the same way.
"""

from __future__ import annotations

import configparser
import dataclasses
import enum
import fnmatch
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from janustls.core.procedures import REFERENCE
from janustls.errors import ConfigError, ConfigErrors

_E = TypeVar("_E", bound=enum.Enum)

__all__ = [
    "ClientCertMode",
    "PortType",
    "PortDefinition",
    "StatusDefinition",
    "Definitions",
    "parse_definitions",
    "parse_partially",
    "load_definitions",
    "load_partially",
    "port_from_options",
    "listen_address",
    "split_endpoint",
    "crl_cache_path",
    "CRL_CACHE_DIR",
    "listen_problem",
]


class ClientCertMode(str, enum.Enum):
    """Janus: `-`, `SSLCLCERT`, `SSLCLCERTR`."""

    NONE = "none"
    REQUEST = "request"
    REQUIRE = "require"


class PortType(str, enum.Enum):
    SRVSOCK = "srvsock"
    WEBSERV = "webserv"
    PROXY = "proxy"


class CRLCheck(str, enum.Enum):
    """Which certificates of a chain need a CRL: the client's only, or every CA's too."""

    LEAF = "leaf"
    CHAIN = "chain"


class CRLExpired(str, enum.Enum):
    """What a port does when a CRL's nextUpdate has passed: refuse the CA's clients (OpenSSL's
    own verdict, the default), or tolerate the stale CRL (still checking what it lists)."""

    REFUSE = "refuse"
    TOLERATE = "tolerate"


class OCSPScope(str, enum.Enum):
    """Which client certificates an OCSP responder is asked about: none, the leaf, or every
    certificate below the trust anchor."""

    NONE = "none"
    LEAF = "leaf"
    CHAIN = "chain"


class OCSPFail(str, enum.Enum):
    """What a port does when no usable OCSP answer comes (unreachable, garbage, stale, unknown)."""

    REFUSE = "refuse"
    TOLERATE = "tolerate"


class ForwardIdentity(str, enum.Enum):
    NONE = "none"
    PROXY_V2 = "proxy-v2"


TLS_VERSIONS = ("1.2", "1.3")
PORT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 5.0
#: janustls.tls.protocol.WRITE_BUFFER_HIGH: 256 KiB of unsent output per connection.
DEFAULT_WRITE_BUFFER_HIGH = 262144
DEFAULT_MAX_CERT_SIZE = 16384
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_CRL_REFRESH = 60.0
# HTTP limits of webserv ports (docs/security.md): every one closes the connection when hit.
DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_BODY_TIMEOUT = 120.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_MAX_BODY = 10 * 1024 * 1024
# HTTP/2 limits of webserv ports with http2 = yes (docs/security.md); the floods count per 10 s.
DEFAULT_H2_MAX_STREAMS = 100
DEFAULT_H2_WINDOW = 262144
DEFAULT_H2_MAX_RESETS = 200
DEFAULT_H2_MAX_PINGS = 50
DEFAULT_H2_MAX_SETTINGS = 50
DEFAULT_OCSP_TIMEOUT = 5.0
DEFAULT_CERT_REFRESH = 60.0


@dataclass(frozen=True)
class PortDefinition:
    """One `[port:NAME]` section, every value checked and typed."""

    name: str
    type: PortType
    listen: str
    certificate: Path
    private_key: Path
    source: str = "<memory>"
    private_key_password_env: str | None = None
    client_cert: ClientCertMode = ClientCertMode.NONE
    addca: tuple[Path, ...] = ()
    crl: tuple[Path, ...] = ()
    crl_check: CRLCheck = CRLCheck.LEAF
    verify_depth: int | None = None
    tls_min: str = "1.2"
    tls_max: str = "1.3"
    ciphers: str | None = None
    max_connections: int | None = None
    idle_timeout: float = 0.0
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_cert_size: int = DEFAULT_MAX_CERT_SIZE
    #: Unsent output per connection (bytes) above which the client is no longer read.
    write_buffer_high: int = DEFAULT_WRITE_BUFFER_HIGH
    session_cache: bool = True
    #: MODULE:CALLABLE of the procedure library, or (embedding) the callable itself.
    handler: str | Callable[..., Any] | None = None
    allow: str | None = None
    proxy_protocol: bool = False
    connect: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    forward_identity: ForwardIdentity = ForwardIdentity.NONE
    crl_refresh: float = DEFAULT_CRL_REFRESH
    crl_url: tuple[str, ...] = ()
    crl_expired: CRLExpired = CRLExpired.REFUSE
    max_connections_per_client: int | None = None
    # webserv only: HTTP-level limits (seconds; 0 = no limit for the timeouts)
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body: int = DEFAULT_MAX_BODY
    #: Offer HTTP/2 (ALPN h2, beside http/1.1); off by default: see docs/web-rules.md.
    http2: bool = False
    h2_max_streams: int = DEFAULT_H2_MAX_STREAMS
    h2_window: int = DEFAULT_H2_WINDOW
    h2_max_resets: int = DEFAULT_H2_MAX_RESETS
    h2_max_pings: int = DEFAULT_H2_MAX_PINGS
    h2_max_settings: int = DEFAULT_H2_MAX_SETTINGS
    ocsp: OCSPScope = OCSPScope.NONE
    ocsp_responder: str | None = None
    ocsp_timeout: float = DEFAULT_OCSP_TIMEOUT
    ocsp_fail: OCSPFail = OCSPFail.REFUSE
    ocsp_staple: bool = False
    cert_refresh: float = DEFAULT_CERT_REFRESH
    # Where each key was set, for errors raised later (file contents, start-up).
    section: str = ""

    @property
    def asks_at_handshake(self) -> bool:
        return self.client_cert is not ClientCertMode.NONE


@dataclass(frozen=True)
class StatusDefinition:
    listen: str


@dataclass(frozen=True)
class WebRuleLine:
    """One raw line of a `[web:PORT]` table; `janustls.core.rules` gives it meaning."""

    key: str
    #: The rule's text; embedding code may give an ON rule's callable, or (callable, "options").
    value: str | Callable[..., Any] | tuple[Callable[..., Any], str]


@dataclass(frozen=True)
class Definitions:
    """A whole port-definition file."""

    source: str
    procs: Path
    ports: tuple[PortDefinition, ...]
    status: StatusDefinition | None = None
    web: Mapping[str, tuple[WebRuleLine, ...]] = field(default_factory=dict)

    def key_material(self) -> tuple[Path, ...]:
        """Every file janustls reads as key material, and this file: never served as a page."""
        paths: list[Path] = [Path(self.source)] if self.source and not self.source.startswith("<") else []
        for p in self.ports:
            paths += [x for x in (p.certificate, p.private_key) if x != Path()]
            paths += [*p.addca, *p.crl]
        return tuple(paths)

    def port(self, name: str) -> PortDefinition:
        for p in self.ports:
            if p.name == name.upper():
                return p
        raise KeyError(name)


PORT_KEYS = frozenset(
    {
        "type", "listen", "certificate", "private_key", "private_key_password_env",
        "client_cert", "addca", "crl", "crl_check", "verify_depth", "tls_min", "tls_max",
        "ciphers", "max_connections", "idle_timeout", "handshake_timeout",
        "request_timeout", "max_cert_size", "session_cache", "handler", "allow",
        "proxy_protocol", "connect", "connect_timeout", "forward_identity",
        "crl_refresh", "crl_expired", "max_connections_per_client", "crl_url",
        "write_buffer_high",
        "header_timeout", "body_timeout", "keepalive_timeout", "max_header_bytes", "max_body",
        "http2", "h2_max_streams", "h2_window", "h2_max_resets", "h2_max_pings", "h2_max_settings",
        "ocsp", "ocsp_responder", "ocsp_timeout", "ocsp_fail", "ocsp_staple", "cert_refresh",
    }
)  # fmt: skip
TYPE_ONLY_KEYS = {
    "handler": PortType.SRVSOCK,
    "connect": PortType.PROXY,
    "connect_timeout": PortType.PROXY,
    "forward_identity": PortType.PROXY,
    "header_timeout": PortType.WEBSERV,
    "body_timeout": PortType.WEBSERV,
    "keepalive_timeout": PortType.WEBSERV,
    "max_header_bytes": PortType.WEBSERV,
    "max_body": PortType.WEBSERV,
    "http2": PortType.WEBSERV,
    "h2_max_streams": PortType.WEBSERV,
    "h2_window": PortType.WEBSERV,
    "h2_max_resets": PortType.WEBSERV,
    "h2_max_pings": PortType.WEBSERV,
    "h2_max_settings": PortType.WEBSERV,
}
JANUS_KEYS = frozenset({"procs"})
STATUS_KEYS = frozenset({"listen"})


class _Collector:
    """Collects errors so one run of `janustls check` reports all of them."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[ConfigError] = []

    def add(self, section: str | None, key: str | None, message: str) -> None:
        self.errors.append(ConfigError(self.file, section, key, message))


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """A server endpoint description as Twisted reads it: (kind, positional arguments, key=value
    arguments), split at unescaped colons; a bare port number is a tcp endpoint."""
    parts = re.split(r"(?<!\\):", description.strip())
    kind = parts[0].strip().lower()
    args = [p for p in parts[1:] if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind.isdigit() or kind.startswith("-"):
        kind, args = "tcp", [parts[0]] + args
    return kind, args, kwargs


def listen_address(description: str) -> tuple[str, str, str] | None:
    """(kind, interface, port) of a tcp-like endpoint description, to find clashes.

    None for kinds that cannot clash (unix paths are compared as given, port 0 never clashes).
    """
    kind, args, kwargs = split_endpoint(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port = kwargs.get("port") or (args[0] if args else "")
        if port.strip() in ("", "0"):
            return None
        return ("tcp", kwargs.get("interface", "").strip(), port.strip())
    if kind == "unix":
        address = kwargs.get("address") or (args[0] if args else "")
        return ("unix", "", address)
    return None


_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")


def listen_problem(description: str) -> str | None:
    """What is wrong with a listen value that Twisted would only find when binding, or None.

    Port numbers of tcp, tcp6 and ssl endpoints are range-checked (0 to 65535); a
    systemd endpoint, whose socket exists only when systemd starts the server, is
    checked for its syntax (domain, index= or name=) without being used.
    """
    kind, args, kwargs = split_endpoint(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port = (kwargs.get("port") or (args[0] if args else "")).strip()
        if not re.fullmatch(r"[0-9]+", port) or int(port) > 65535:
            return f"has port {port!r}; a port number is 0 to 65535 (0: any free port)"
    elif kind == "systemd":
        domain = kwargs.get("domain", args[0] if args else "").strip()
        if domain.upper() not in _SYSTEMD_DOMAINS:
            return f"has systemd domain {domain!r}; expected one of {', '.join(_SYSTEMD_DOMAINS)}"
        index = kwargs.get("index")
        if index is None and not kwargs.get("name"):
            return "is a systemd endpoint without index= or name= (the socket systemd passes)"
        if index is not None and not re.fullmatch(r"[0-9]+", index.strip()):
            return f"has systemd index {index!r}; expected a number from 0"
    return None


def _clash(a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    if a[0] != b[0] or a[2] != b[2]:
        return False
    wildcard = ("", "0.0.0.0", "::")
    return a[1] == b[1] or a[1] in wildcard or b[1] in wildcard


#: The directory, in the procedure library, of the CRLs fetched from `crl_url`s.
CRL_CACHE_DIR = ".crl-cache"


def crl_cache_path(procs: Path, url: str) -> Path:
    """Where the CRL fetched from `url` is kept (`janustls.ops.crlfetch` writes it; the port
    reads it as one of its CRL files)."""
    return procs / CRL_CACHE_DIR / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".crl")


def _split_paths(value: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", value.strip()) if p]


class _PortReader:
    """Reads one port section's options into PortDefinition keyword arguments."""

    def __init__(self, errors: _Collector, section: str, options: Mapping[str, str], procs: Path) -> None:
        self.errors = errors
        self.section = section
        self.options = options
        self.procs = procs

    def error(self, key: str | None, message: str) -> None:
        self.errors.add(self.section, key, message)

    def get(self, key: str) -> str | None:
        value = self.options.get(key)
        if value is None:
            return None
        value = value.strip()
        if value == "":
            self.error(key, "is empty (remove the line or give a value)")
            return None
        return value

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.procs / p

    def choice(self, key: str, enum_type: type[_E], default: _E) -> _E:
        value = self.get(key)
        if value is None:
            return default
        try:
            return enum_type(value.lower())
        except ValueError:
            allowed = " | ".join(str(m.value) for m in enum_type)
            self.error(key, f"is {value!r}; expected one of {allowed}")
            return default

    @overload
    def number(
        self, key: str, default: int, *, integer: Literal[True], low: float, high: float | None = None
    ) -> int: ...
    @overload
    def number(
        self, key: str, default: None, *, integer: Literal[True], low: float, high: float | None = None
    ) -> int | None: ...
    @overload
    def number(
        self, key: str, default: float, *, integer: Literal[False], low: float, high: float | None = None
    ) -> float: ...
    def number(
        self, key: str, default: float | None, *, integer: bool, low: float, high: float | None = None
    ) -> float | None:
        value = self.get(key)
        if value is None:
            return default
        try:
            n: float = int(value) if integer else float(value)
        except ValueError:
            self.error(key, f"is {value!r}; expected a {'whole ' if integer else ''}number")
            return default
        if n != n or n < low or (high is not None and n > high):
            bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            self.error(key, f"is {value}; expected a number {bound}")
            return default
        return n

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        truth = {
            "yes": True,
            "true": True,
            "on": True,
            "1": True,
            "no": False,
            "false": False,
            "off": False,
            "0": False,
        }
        if value.lower() not in truth:
            self.error(key, f"is {value!r}; expected yes or no")
            return default
        return truth[value.lower()]

    def read(self, name: str, extra_cas: Iterable[Path], file: str, *, embedded: bool = False) -> PortDefinition | None:
        """`embedded`: the caller supplies the listening endpoint and the application (endpoint plugin)."""
        o = self.options
        for option in o:
            if option not in PORT_KEYS:
                self.error(option, "is not a port key (see the port-definition reference)")
        ptype = self.get("type")
        port_type: PortType | None = None
        if ptype is None and embedded:
            port_type = PortType.SRVSOCK
        elif ptype is None:
            if "type" not in o:
                self.error("type", "is missing; expected srvsock | webserv | proxy")
        else:
            try:
                port_type = PortType(ptype.lower())
            except ValueError:
                self.error("type", f"is {ptype!r}; expected srvsock | webserv | proxy")
        listen = self.get("listen")
        if listen is None and "listen" not in o and not embedded:
            self.error("listen", "is missing; give a Twisted endpoint, e.g. tcp:8443:interface=127.0.0.1")
        problem = listen_problem(listen) if listen else None
        if problem:
            self.error("listen", problem)
        cert = self.get("certificate")
        key = self.get("private_key")
        mode = self.choice("client_cert", ClientCertMode, ClientCertMode.NONE)
        if cert is None and "certificate" not in o:
            if "client_cert" in o:
                self.error("client_cert", "is set on a port without a certificate (a TLS port needs certificate =)")
            else:
                self.error("certificate", "is missing; every port is a TLS port and needs its certificate chain")
        if key is None and cert is not None:
            key = cert
        addca = tuple(self.path(p) for p in _split_paths(o.get("addca", ""))) + tuple(extra_cas)
        if mode is not ClientCertMode.NONE and not addca:
            self.error(
                "client_cert", f"is {mode.value} but no CA is added for this port (addca = or an [addca] pattern)"
            )
        crls = tuple(self.path(p) for p in _split_paths(o.get("crl", "")))
        crl_urls = tuple(_split_paths(o.get("crl_url", "")))
        for url in crl_urls:
            if not re.match(r"^https?://[^/\s]+", url):
                self.error("crl_url", f"has {url!r}; expected http:// or https:// URLs")
        # A fetched CRL is a CRL file like the others: its cache file (janustls.ops.crlfetch).
        crls += tuple(crl_cache_path(self.procs, url) for url in crl_urls)
        tls_min = self.get("tls_min") or "1.2"
        tls_max = self.get("tls_max") or "1.3"
        for k, v in (("tls_min", tls_min), ("tls_max", tls_max)):
            if v not in TLS_VERSIONS:
                self.error(k, f"is {v!r}; expected 1.2 or 1.3 (older versions are broken and not offered)")
        if tls_min in TLS_VERSIONS and tls_max in TLS_VERSIONS and tls_min > tls_max:
            self.error("tls_max", f"is {tls_max}, below tls_min = {tls_min}")
        handler = self.get("handler")
        if handler is not None and not REFERENCE.match(handler):
            self.error("handler", f"is {handler!r}; expected MODULE:CALLABLE from the procedure library")
        connect = self.get("connect")
        if port_type is not None:
            for k, wanted in TYPE_ONLY_KEYS.items():
                if k in o and port_type is not wanted:
                    self.error(k, f"applies to {wanted.value} ports, not {port_type.value}")
            if port_type is PortType.SRVSOCK and handler is None and "handler" not in o and not embedded:
                self.error("handler", "is missing; a srvsock port needs handler = MODULE:CALLABLE")
            if port_type is PortType.PROXY and connect is None and "connect" not in o:
                self.error("connect", "is missing; a proxy port needs connect = a Twisted client endpoint")
        pw_env = self.get("private_key_password_env")
        if pw_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", pw_env):
            self.error("private_key_password_env", f"is {pw_env!r}; expected an environment variable name")
        depth = self.number("verify_depth", None, integer=True, low=1, high=100)
        ocsp_scope = self.choice("ocsp", OCSPScope, OCSPScope.NONE)
        if ocsp_scope is not OCSPScope.NONE and not addca:
            self.error("ocsp", f"is {ocsp_scope.value} on a port that trusts no CA for client certificates (addca =)")
        responder = self.get("ocsp_responder")
        if responder is not None and not re.match(r"^https?://[^/\s]+", responder):
            self.error("ocsp_responder", f"is {responder!r}; expected an http:// or https:// URL")
        return PortDefinition(
            name=name,
            type=port_type or PortType.SRVSOCK,
            listen=listen or "",
            certificate=self.path(cert) if cert else Path(),
            private_key=self.path(key) if key else Path(),
            source=file,
            section=self.section,
            private_key_password_env=pw_env,
            client_cert=mode,
            addca=addca,
            crl=crls,
            crl_check=self.choice("crl_check", CRLCheck, CRLCheck.LEAF),
            verify_depth=depth,
            tls_min=tls_min,
            tls_max=tls_max,
            ciphers=self.get("ciphers"),
            max_connections=self.number("max_connections", None, integer=True, low=1),
            idle_timeout=float(self.number("idle_timeout", 0.0, integer=False, low=0)),
            handshake_timeout=float(
                self.number("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT, integer=False, low=0.1)
            ),
            request_timeout=float(self.number("request_timeout", DEFAULT_REQUEST_TIMEOUT, integer=False, low=0.1)),
            max_cert_size=self.number("max_cert_size", DEFAULT_MAX_CERT_SIZE, integer=True, low=256),
            write_buffer_high=self.number(
                "write_buffer_high", DEFAULT_WRITE_BUFFER_HIGH, integer=True, low=4096, high=2**30
            ),
            session_cache=self.boolean("session_cache", True),
            handler=handler,
            allow=self.get("allow"),
            proxy_protocol=self.boolean("proxy_protocol", False),
            connect=connect,
            connect_timeout=float(self.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT, integer=False, low=0.1)),
            forward_identity=self.choice("forward_identity", ForwardIdentity, ForwardIdentity.NONE),
            crl_refresh=float(self.number("crl_refresh", DEFAULT_CRL_REFRESH, integer=False, low=0)),
            crl_url=crl_urls,
            crl_expired=self.choice("crl_expired", CRLExpired, CRLExpired.REFUSE),
            max_connections_per_client=self.number("max_connections_per_client", None, integer=True, low=1),
            header_timeout=float(self.number("header_timeout", DEFAULT_HEADER_TIMEOUT, integer=False, low=0)),
            body_timeout=float(self.number("body_timeout", DEFAULT_BODY_TIMEOUT, integer=False, low=0)),
            keepalive_timeout=float(self.number("keepalive_timeout", DEFAULT_KEEPALIVE_TIMEOUT, integer=False, low=0)),
            max_header_bytes=self.number(
                "max_header_bytes", DEFAULT_MAX_HEADER_BYTES, integer=True, low=1024, high=1 << 20
            ),
            max_body=self.number("max_body", DEFAULT_MAX_BODY, integer=True, low=0),
            http2=self.boolean("http2", False),
            h2_max_streams=self.number("h2_max_streams", DEFAULT_H2_MAX_STREAMS, integer=True, low=1, high=1 << 16),
            h2_window=self.number("h2_window", DEFAULT_H2_WINDOW, integer=True, low=65535, high=2**31 - 1),
            h2_max_resets=self.number("h2_max_resets", DEFAULT_H2_MAX_RESETS, integer=True, low=1),
            h2_max_pings=self.number("h2_max_pings", DEFAULT_H2_MAX_PINGS, integer=True, low=1),
            h2_max_settings=self.number("h2_max_settings", DEFAULT_H2_MAX_SETTINGS, integer=True, low=1),
            ocsp=ocsp_scope,
            ocsp_responder=responder,
            ocsp_timeout=float(self.number("ocsp_timeout", DEFAULT_OCSP_TIMEOUT, integer=False, low=0.1, high=60)),
            ocsp_fail=self.choice("ocsp_fail", OCSPFail, OCSPFail.REFUSE),
            ocsp_staple=self.boolean("ocsp_staple", False),
            cert_refresh=float(self.number("cert_refresh", DEFAULT_CERT_REFRESH, integer=False, low=0)),
        )


def parse_definitions(text: str, source: str = "<string>", base: Path | None = None) -> Definitions:
    """Parse port-definition text; raise ConfigErrors listing every mistake."""
    definitions, errors = parse_partially(text, source, base)
    if errors:
        raise ConfigErrors(errors)
    return definitions


def parse_partially(
    text: str, source: str = "<string>", base: Path | None = None
) -> tuple[Definitions, list[ConfigError]]:
    """The mistakes, and the definitions with only the ports whose sections have none.

    `janustls check` builds those ports too, so one run reports both the file's own
    mistakes and the problems of the certificates, keys and handlers it names.  Raises
    ConfigErrors only when the file cannot be read as INI at all.
    """
    errors = _Collector(source)
    base = base if base is not None else Path.cwd()
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, strict=True, delimiters=("=",)
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case; typeshed types it a method
    try:
        parser.read_string(text, source=source)
    except configparser.DuplicateSectionError as e:
        raise ConfigErrors([ConfigError(source, e.section, None, f"is defined twice (line {e.lineno})")])
    except configparser.DuplicateOptionError as e:
        raise ConfigErrors([ConfigError(source, e.section, e.option, f"is set twice in the section (line {e.lineno})")])
    except configparser.MissingSectionHeaderError as e:
        raise ConfigErrors([ConfigError(source, None, None, f"line {e.lineno}: a key before any [section] header")])
    except configparser.ParsingError as e:
        lines = ", ".join(f"line {n}: {line.strip()!r}" for n, line in e.errors)
        raise ConfigErrors([ConfigError(source, None, None, f"cannot parse {lines} (expected key = value)")])

    janus = {k.lower(): v for k, v in parser["janustls"].items()} if parser.has_section("janustls") else {}
    for k in janus:
        if k not in JANUS_KEYS:
            errors.add("janustls", k, "is not a key of the [janustls] section (known: procs)")
    procs_value = (janus.get("procs") or "procs").strip()
    procs = Path(os.path.expanduser(procs_value))
    if not procs.is_absolute():
        procs = base / procs

    port_sections: dict[str, str] = {}
    web_sections: dict[str, str] = {}
    status: StatusDefinition | None = None
    addca_patterns: list[tuple[str, list[Path]]] = []
    for section in parser.sections():
        kind, _, name = section.partition(":")
        kind = kind.strip().lower()
        name = name.strip()
        if kind in ("port", "web"):
            if not PORT_NAME.match(name):
                errors.add(section, None, "a port name is letters, digits, _ and - only")
                continue
            table = port_sections if kind == "port" else web_sections
            if name.upper() in table:
                errors.add(section, None, f"names the same port as [{table[name.upper()]}] (names ignore case)")
                continue
            table[name.upper()] = section
        elif section.lower() == "status":
            opts = parser[section]
            for k in opts:
                if k not in STATUS_KEYS:
                    errors.add(section, k, "is not a key of [status] (known: listen)")
            if not (opts.get("listen") or "").strip():
                errors.add(section, "listen", "is missing; e.g. listen = tcp:9100:interface=127.0.0.1")
            else:
                status = StatusDefinition(listen=opts["listen"].strip())
                problem = listen_problem(status.listen)
                if problem:
                    errors.add(section, "listen", problem)
        elif section.lower() == "addca":
            for pattern, value in parser[section].items():
                files = _split_paths(value)
                if not files:
                    errors.add(section, pattern, "names no CA file")
                paths = [Path(os.path.expanduser(f)) for f in files]
                addca_patterns.append((pattern, [p if p.is_absolute() else procs / p for p in paths]))
        elif section.lower() == "janustls":
            pass
        else:
            errors.add(section, None, "is not a known section ([janustls], [port:NAME], [web:NAME], [status], [addca])")

    for pattern, _ in addca_patterns:
        if not any(fnmatch.fnmatchcase(n, pattern.upper()) for n in port_sections):
            errors.add("addca", pattern, "matches no port")

    ports: list[PortDefinition] = []
    for name, section in port_sections.items():
        extra = [p for pattern, files in addca_patterns if fnmatch.fnmatchcase(name, pattern.upper()) for p in files]
        reader = _PortReader(errors, section, dict(parser[section]), procs)
        port = reader.read(name, extra, source)
        if port is not None:
            ports.append(port)

    seen: list[tuple[tuple[str, str, str], PortDefinition]] = []
    for port in ports:
        address = listen_address(port.listen) if port.listen else None
        if address is None:
            continue
        for addr, other in seen:
            if _clash(address, addr):
                errors.add(port.section, "listen", f"uses the same address as [{other.section}] ({port.listen})")
        seen.append((address, port))

    web: dict[str, tuple[WebRuleLine, ...]] = {}
    by_name = {p.name: p for p in ports}
    for name, section in web_sections.items():
        port = by_name.get(name)
        if port is None:
            errors.add(section, None, f"is a rule table for port {name}, which is not defined")
        elif port.type is not PortType.WEBSERV:
            errors.add(section, None, f"is a rule table, but port {name} is type {port.type.value}, not webserv")
        web[name] = tuple(WebRuleLine(k, v.strip()) for k, v in parser[section].items())

    if not ports and not errors.errors:
        errors.add(None, None, "defines no port (add a [port:NAME] section)")
    faulty = {e.section for e in errors.errors}
    clean = tuple(p for p in ports if p.section not in faulty)
    return Definitions(source=source, procs=procs, ports=clean, status=status, web=web), errors.errors


def _read(path: str | os.PathLike[str]) -> tuple[str, Path]:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8"), p
    except OSError as e:
        raise ConfigErrors([ConfigError(str(p), None, None, f"cannot be read: {e.strerror or e}")])
    except UnicodeDecodeError as e:
        raise ConfigErrors([ConfigError(str(p), None, None, f"is not UTF-8 text: {e}")])


def load_definitions(path: str | os.PathLike[str]) -> Definitions:
    """Read a port-definition file; errors name the file."""
    text, p = _read(path)
    return parse_definitions(text, source=str(p), base=p.resolve().parent)


def load_partially(path: str | os.PathLike[str]) -> tuple[Definitions, list[ConfigError]]:
    """`parse_partially` for a file (for `janustls check`)."""
    text, p = _read(path)
    return parse_partially(text, source=str(p), base=p.resolve().parent)


def port_from_options(
    name: str,
    options: Mapping[str, str],
    *,
    procs: Path | None = None,
    source: str = "<endpoint>",
    embedded: bool = False,
) -> PortDefinition:
    """One port from key=value options (the endpoint string plugin, embedding code).

    `embedded`: the caller listens and serves itself, so `listen`, `type` and
    `handler` may be left out.
    """
    errors = _Collector(source)
    section = f"port:{name}"
    opts: dict[str, Any] = dict(options)
    # Embedding code may give the srvsock handler as the callable itself, not MODULE:CALLABLE.
    handler = opts.get("handler")
    if handler is not None and not isinstance(handler, str):
        if not callable(handler):
            raise ConfigErrors(
                [ConfigError(source, section, "handler", f"is {handler!r}; expected MODULE:CALLABLE or a callable")]
            )
        opts["handler"] = "embedded:handler"  # validated as given; replaced by the callable below
    reader = _PortReader(errors, section, opts, procs or Path.cwd())
    port = reader.read(name.upper(), (), source, embedded=embedded)
    if errors.errors or port is None:
        raise ConfigErrors(errors.errors)
    if handler is not None and not isinstance(handler, str):
        port = dataclasses.replace(port, handler=handler)
    return port
