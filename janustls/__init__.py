"""janustls: a programmable mutual-TLS server framework on Twisted."""

from janustls.core.config import (
    ClientCertMode,
    Definitions,
    PortDefinition,
    PortType,
    load_definitions,
    parse_definitions,
)
from janustls.core.reasons import Reason, Refusal
from janustls.errors import ConfigError, ConfigErrors, JanusError
from janustls.ops.build import build_ports, listen
from janustls.ops.service import JanusService
from janustls.ports.connection import Connection

__version__ = "0.1.0"

__all__ = [
    "ClientCertMode",
    "ConfigError",
    "ConfigErrors",
    "Connection",
    "Definitions",
    "JanusError",
    "JanusService",
    "PortDefinition",
    "PortType",
    "Reason",
    "Refusal",
    "build_ports",
    "listen",
    "load_definitions",
    "parse_definitions",
]
