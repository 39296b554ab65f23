"""twistd options and service maker, and the `janustls:` server endpoint string parser.

`twisted/plugins/janustls_plugin.py` only instantiates the two objects defined here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from janustls.core.config import load_definitions, port_from_options
from janustls.errors import ConfigErrors, MaterialError
from janustls.ops.operate import ServerRoot, twistd_log_file, twistd_log_path
from janustls.ops.service import JanusService
from janustls.ops.workers import WorkersService
from janustls.ports.accept_proxy import ProxyHeaderEndpoint
from janustls.ports.endpoint import JanusServerEndpoint, connection_of
from janustls.ports.web.loop import AsyncioReactorNeeded, ensure_asyncio_reactor, uses_asgi
from janustls.tls import tickets
from janustls.tls.policy import build_port_tls

__all__ = ["Options", "JanusServiceMaker", "JanusEndpointParser", "connection_of"]


class Options(usage.Options):
    synopsis = "--port-def FILE"
    longdesc = (
        "Run the TLS ports of a port-definition file (INI). Each [port:NAME] section is a "
        "srvsock, webserv or proxy port with its own certificate, client-certificate mode "
        "(none, request, require) and trusted CAs. Check a file first with `janustls check FILE`."
    )
    optParameters = [  # noqa: RUF012  twisted.python.usage reads (never mutates) this class attribute
        ["port-def", "p", None, "The port-definition file (INI) to run."],
        ["log-format", None, "text", "text | json (one JSON object per line, each with its event_id)."],
        ["workers", "w", "0", "Serve with N worker processes sharing the listening sockets (0: in this process)."],
        ["ticket-key", None, None, "A file of random bytes: session ticket keys shared by workers and machines."],
        ["drain-timeout", None, "10", "Seconds open connections get to finish at shutdown."],
    ]

    def postOptions(self) -> None:
        # A plain exit status 1 on every Twisted release (some end a UsageError with 0,
        # which a service manager would take for success).
        try:
            self._check()
        except usage.UsageError as e:
            raise SystemExit(f"twistd janustls: {e} (see twistd janustls --help)") from None

    def _check(self) -> None:
        if not self["port-def"]:
            raise usage.UsageError("--port-def FILE is required")
        if not Path(self["port-def"]).is_file():
            raise usage.UsageError(f"--port-def: {self['port-def']} is not a file")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format: {self['log-format']!r}; expected text or json")
        for key, convert, low in (("workers", int, 0), ("drain-timeout", float, 0)):
            try:
                self[key] = convert(self[key])
            except ValueError:
                raise usage.UsageError(f"--{key}: {self[key]!r} is not a number")
            if self[key] < low:
                raise usage.UsageError(f"--{key}: must be at least {low}")
        if self["ticket-key"] is not None and not Path(self["ticket-key"]).is_file():
            raise usage.UsageError(f"--ticket-key: {self['ticket-key']} is not a file")


@implementer(IServiceMaker, IPlugin)
class JanusServiceMaker:
    tapname = "janustls"
    description = "Mutual-TLS ports (srvsock, webserv, proxy) from a port-definition file."
    options = Options

    def makeService(self, options: Options) -> MultiService:
        inner: Any
        try:
            definitions = load_definitions(options["port-def"])
            if uses_asgi(definitions.web):
                ensure_asyncio_reactor()  # before anything imports the reactor (twistd has not yet)
            if options["workers"] > 0:
                inner = WorkersService(definitions, options["workers"], log_format=options["log-format"],
                                       drain_timeout=options["drain-timeout"], ticket_key=options["ticket-key"],
                                       log_path=twistd_log_path(options))  # fmt: skip
            else:
                tickets.configure(options["ticket-key"])
                inner = JanusService(definitions)
        except ConfigErrors as e:
            raise SystemExit(f"janustls: {e}")
        except MaterialError as e:
            raise SystemExit(f"janustls: --ticket-key: {e}")
        except AsyncioReactorNeeded as e:
            raise SystemExit(f"janustls: {e}")
        # SIGHUP reloads; --log-format json replaces twistd's text log; stopping drains.
        return ServerRoot(inner, log_format=options["log-format"], log_file=lambda: twistd_log_file(options),
                          drain_timeout=options["drain-timeout"])  # fmt: skip


# -- the endpoint string plugin (its port kind: `janustls.ports.endpoint`) ----------------


@implementer(IPlugin, IStreamServerEndpointStringParser)
class JanusEndpointParser:
    """`janustls:PORT:interface=...:certificate=...:client_cert=require:addca=...`, or
    `janustls:port_def=FILE:name=NAME` to use one port of a definition file.

    Keys are the port-definition keys; paths are relative to the working directory.
    """

    prefix = "janustls"

    def parseStreamServer(  # type: ignore[override]  # Twisted passes only the strings of the description
        self, reactor: Any, *args: str, **kwargs: str
    ) -> IStreamServerEndpoint:
        if "port_def" in kwargs:
            definitions = load_definitions(kwargs.pop("port_def"))
            name = kwargs.pop("name", None)
            if args or kwargs:
                raise ValueError("janustls: with port_def= give only name=")
            if name is None and len(definitions.ports) != 1:
                raise ValueError("janustls: name= is needed when the file defines several ports")
            port = definitions.port(name) if name else definitions.ports[0]
            tcp = serverFromString(reactor, port.listen)
        else:
            if len(args) != 1:
                raise ValueError("janustls: the first argument is the TCP port number")
            interface = kwargs.pop("interface", "")
            backlog = int(kwargs.pop("backlog", "50"))
            port = port_from_options(kwargs.pop("name", "ENDPOINT"), kwargs, procs=Path.cwd(), embedded=True)
            if ":" in interface:
                tcp = TCP6ServerEndpoint(reactor, int(args[0]), backlog, interface)
            else:
                tcp = TCP4ServerEndpoint(reactor, int(args[0]), backlog, interface)
        if port.proxy_protocol:  # a PROXY v1/v2 header precedes TLS
            tcp = ProxyHeaderEndpoint(tcp)
        return JanusServerEndpoint(reactor, tcp, port, build_port_tls(port))
