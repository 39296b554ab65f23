"""The actions of web rules: Python callables, twisted.web resources, WSGI applications and
forwarding to a backend, each answering one request."""

from __future__ import annotations

import inspect
import json
import os
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.wsgi import WSGIResource

from janustls.core.forwarding import FORWARDED_HEADERS, identity_headers, is_identity_header, parse_backend
from janustls.core.rules import Action, Resolution, Rule
from janustls.core.webpath import encode
from janustls.events import emit
from janustls.ports.base import PortRuntime, address_text
from janustls.ports.web.asgi import AsgiApp, serve_http
from janustls.ports.web.request import JanusRequest, strip_identity_headers
from janustls.ports.web.scope import http_scope, mount_paths
from janustls.ports.web.upgrade import ForwardTunnel, WebSocketTunnel, handshake_bytes
from janustls.tls._twisted import wsgi_response

__all__ = ["Actions", "JanusWSGIResource"]

# -- WSGI with mod_ssl's variables ----------------------------------------------------------------


class JanusWSGIResource(WSGIResource):
    """twisted.web's WSGI container, with Apache mod_ssl's SSL_* variables in the environ."""

    def render(self, request: JanusRequest) -> int:
        strip_identity_headers(request)

        def complete(environ: dict[str, Any]) -> None:
            environ.update(request.ssl_environ())
            # PEP 3333: SCRIPT_NAME and PATH_INFO decoded, as the bytes of the normal path read as latin-1.
            for key, value in getattr(request, "wsgi_paths", {}).items():
                environ[key] = value.encode("utf-8").decode("latin-1")

        wsgi_response(self, request, complete)
        return NOT_DONE_YET


_CONTENT_TYPES: dict[str, bytes] = {}


def content_type(value: str) -> bytes:
    """A rule's Content-Type, encoded once."""
    encoded = _CONTENT_TYPES.get(value)
    if encoded is None:
        encoded = value.encode()
        if len(_CONTENT_TYPES) < 1024:
            _CONTENT_TYPES[value] = encoded
    return encoded


class Actions:
    """The actions of a web rule: a page, a redirect, a call, a mounted resource, WSGI, a forward."""

    runtime: PortRuntime
    reactor: Any
    _wsgi: dict[int, JanusWSGIResource]
    _asgi: dict[int, AsgiApp]
    #: Per handler of the table (by id): whether it is a twisted.web resource (mounted) or a callable.
    _resources: dict[int, bool]

    if TYPE_CHECKING:  # from the other parts of the port's factory (port.WebFactory: Dispatch, Actions, Responses)

        def _finish(self, request: JanusRequest, body: Any) -> None: ...
        def _page(
            self,
            request: JanusRequest,
            relative: str,
            ctype: str | None,
            status: int | None,
            *,
            conditional: bool,
            within: str = "",
        ) -> Any: ...
        def _redirect(self, request: JanusRequest, url: str, status: int) -> None: ...
        def _handler_error(self, request: JanusRequest, rule: Rule, failure: Failure) -> None: ...

    def _run(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any:
        if rule.action is Action.CALL:
            return self._call(request, rule, res)
        if rule.action is Action.REDIRECT:
            self._redirect(request, rule.substitute([encode(p) for p in res.parts]), rule.status or 302)
            return NOT_DONE_YET
        if rule.action is Action.PAGE:
            within = rule.page_root if res.parts else rule.target
            return self._page(
                request, rule.substitute(res.parts), res.content_type, rule.status, conditional=True, within=within
            )
        if rule.action is Action.WSGI:
            self._mount(request, rule)
            return self._wsgi[rule.index].render(request)
        if rule.action is Action.FORWARD:
            if request.upgrade_rest is not None:
                return self._forward_upgrade(request, rule.substitute([encode(p) for p in res.parts]))
            return self._forward(request, rule.substitute([encode(p) for p in res.parts]))
        if rule.action is Action.ASGI:
            return self._asgi_request(request, rule)
        raise AssertionError(rule.action)

    def _asgi_request(self, request: JanusRequest, rule: Rule) -> Any:
        """An ASGI app answers: once its lifespan startup is done, with the connection's TLS extension."""
        app = self._asgi[rule.index]
        if not app.ready.called:
            app.ready.addCallback(lambda _: None if request.gone else self._asgi_request(request, rule))
            return NOT_DONE_YET
        proto = request.janus_protocol
        path = request.normal_path if request.normal_path is not None else request.path.decode("latin-1")
        raw_path, _, query = request.uri.partition(b"?")
        root_path, full = mount_paths(path, rule.prefix, rule.mount)
        headers = [(n.lower(), v) for n, v in getattr(request, "raw_headers", ()) if not is_identity_header(n)]
        peer, host = request.client, request.getHost()
        websocket = request.upgrade_rest is not None and any(
            n == b"upgrade" and v.strip().lower() == b"websocket" for n, v in headers
        )
        if websocket:
            protocols = [
                p.strip()
                for n, v in headers
                if n == b"sec-websocket-protocol"
                for p in v.decode("latin-1").split(",")
                if p.strip()
            ]
            scope = http_scope(kind="websocket", method="GET", path=full, raw_path=raw_path, query=query, http_version="1.1", headers=headers,
                               client=(peer.host, peer.port) if hasattr(peer, "host") else None,
                               server=(host.host, host.port) if hasattr(host, "host") else None,
                               root_path=root_path, extensions=proto.asgi_extensions(), state=app.state, subprotocols=protocols)  # fmt: skip
            transport = proto.transport
            ws_peer = address_text(request.connection.peer)

            def ws_failed(failure: Failure) -> None:
                emit("janustls.handler.error", "port {port}: handler {handler} raised for {peer}: {error}", LogLevel.error,
                     port=self.runtime.port.name, handler=rule.value, peer=ws_peer, error=failure.getErrorMessage(), log_failure=failure)  # fmt: skip

            tunnel = WebSocketTunnel(app, scope, transport.write, proto.close, ws_failed)
            rest = request.channel.take_over(tunnel)  # type: ignore[attr-defined]  # the channel is our JanusChannel (twisted.web declares an HTTPChannel)
            tunnel.start(handshake_bytes(request.method, request.uri, request.raw_headers), rest)
            return NOT_DONE_YET
        scope = http_scope(kind="http", method=request.method.decode("latin-1"), path=full, raw_path=raw_path, query=query,
                           http_version=request.clientproto.decode("latin-1").partition("/")[2] or "1.1", headers=headers,
                           client=(peer.host, peer.port) if hasattr(peer, "host") else None,
                           server=(host.host, host.port) if hasattr(host, "host") else None,
                           root_path=root_path, extensions=proto.asgi_extensions(), state=app.state)  # fmt: skip
        conn = request.connection

        def failed(failure: Failure) -> None:
            if not (request.finished or request.gone):
                self._handler_error(request, rule, failure)
                return
            # answered already (Starlette answers 500 itself, then re-raises): logged only
            emit("janustls.handler.error", "port {port}: handler {handler} raised for {peer}: {error}", LogLevel.error,
                 port=self.runtime.port.name, handler=rule.value, peer=address_text(conn.peer), error=failure.getErrorMessage(), log_failure=failure)  # fmt: skip

        serve_http(app, request, scope, failed)
        return NOT_DONE_YET

    def _forward(self, request: JanusRequest, url: str) -> Any:
        """Send the request on to an HTTP backend with the client's identity as headers.

        Headers the client sent that read as ones janustls sets are dropped first: only
        janustls can set them.  The body (de-chunked and bounded by max_body) goes on with
        a Content-Length and nothing else framing it, so the backend reads exactly one request.
        """
        backend = parse_backend(url)
        headers = request.requestHeaders
        strip_identity_headers(request)
        for name in (
            b"transfer-encoding",
            b"content-length",
            b"te",
            b"trailer",
            b"upgrade",
            b"proxy-connection",
            b"keep-alive",
        ):
            headers.removeHeader(name)
        content = request.content
        size = 0
        if content is not None:
            content.seek(0, os.SEEK_END)
            size = content.tell()
            content.seek(0)
        if size or request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"):
            headers.setRawHeaders(b"content-length", [b"%d" % size])
        conn = request.connection
        chain = conn.cert_chain
        for key, value in identity_headers(chain, request.janus_protocol.transport.refusal).items():
            headers.setRawHeaders(key.encode("ascii"), [value.encode("utf-8")])
        peer = getattr(conn.peer, "host", None)
        if peer is not None:
            headers.setRawHeaders(b"x-forwarded-for", [peer.encode("ascii")])
        headers.setRawHeaders(b"x-forwarded-proto", [b"https"])
        path, _, query = backend.path.partition("?")
        if not query and b"?" in request.uri:
            query = request.uri.split(b"?", 1)[1].decode("latin-1")
        # twisted.web.proxy imports (so installs) the global reactor: imported here, after the
        # plugin chose it (asgi rules need the asyncio reactor).
        from twisted.web.proxy import ReverseProxyResource

        resource = ReverseProxyResource(backend.host, backend.port, path.encode("latin-1"), reactor=self.reactor)
        request.uri = (path + ("?" + query if query else "")).encode("latin-1")
        return resource.render(request)

    def _forward_upgrade(self, request: JanusRequest, url: str) -> Any:
        """An Upgrade (a WebSocket) on a forward rule: the head goes on with the identity headers
        (forged ones removed), then the connection is spliced to the backend both ways."""
        backend = parse_backend(url)
        path, _, query = backend.path.partition("?")
        if not query and b"?" in request.uri:
            query = request.uri.split(b"?", 1)[1].decode("latin-1")
        drop = {
            b"content-length",
            b"transfer-encoding",
            b"te",
            b"trailer",
            b"proxy-connection",
            b"keep-alive",
            *FORWARDED_HEADERS,
        }
        headers = [(n, v) for n, v in request.raw_headers if not is_identity_header(n) and n.lower() not in drop]
        conn = request.connection
        proto = request.janus_protocol
        headers += [
            (n.encode("ascii"), v.encode("utf-8"))
            for n, v in identity_headers(conn.cert_chain, proto.transport.refusal).items()
        ]
        peer = getattr(conn.peer, "host", None)
        if peer is not None:
            headers.append((b"X-Forwarded-For", peer.encode("ascii")))
        headers.append((b"X-Forwarded-Proto", b"https"))
        head = handshake_bytes(request.method, (path + ("?" + query if query else "")).encode("latin-1"), headers)
        transport = proto.transport
        tunnel = ForwardTunnel(transport.write, proto.close)
        rest = request.channel.take_over(tunnel)  # type: ignore[attr-defined]  # the channel is our JanusChannel (twisted.web declares an HTTPChannel)
        tunnel.start(self.reactor, backend.host, backend.port, head, rest)
        return NOT_DONE_YET

    def _mount(self, request: JanusRequest, rule: Rule) -> None:
        """prepath = the rule's literal prefix, postpath = the rest (SCRIPT_NAME / PATH_INFO), from the normal path;
        with mount=root, SCRIPT_NAME is empty and PATH_INFO the full path."""
        prefix = rule.prefix.rstrip("/") if rule.mount != "root" else ""
        path = request.normal_path if request.normal_path is not None else request.path.decode("latin-1")
        rest = path[len(prefix) :] if path.startswith(prefix) else path
        request.wsgi_paths = {"SCRIPT_NAME": prefix if path.startswith(prefix) else "", "PATH_INFO": rest}  # type: ignore[attr-defined]  # our field on the request, read by JanusWSGIResource
        request.prepath = [s.encode("utf-8") for s in prefix.split("/") if s]
        tail = rest.encode("utf-8")
        request.postpath = tail.split(b"/")[1:] if tail.startswith(b"/") else ([tail] if tail else [])

    def _call(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any:
        handler = rule.handler
        try:
            resource = self._resources.get(id(handler))
            if resource is None:  # asked once per handler (the table holds it): providedBy is not free
                resource = self._resources[id(handler)] = bool(IResource.providedBy(handler))
            if resource:
                self._mount(request, rule)
                return getChildForRequest(handler, request).render(request)
            result = handler(request)
        except Exception:
            self._handler_error(request, rule, Failure())
            return NOT_DONE_YET
        if isinstance(result, str):  # the type goes out unless the handler set one
            request.default_content_type(content_type(res.content_type or "text/html; charset=utf-8"))
            return result.encode("utf-8")
        if isinstance(result, bytes):
            if res.content_type:
                request.default_content_type(content_type(res.content_type))
            return result
        if inspect.isawaitable(result) and not isinstance(result, defer.Deferred):
            result = defer.ensureDeferred(result)  # type: ignore[arg-type]  # a handler's awaitable; the stub names coroutines only
        if isinstance(result, defer.Deferred):
            result.addCallbacks(lambda value: self._finish(request, self._coerce(request, value, res)),
                                lambda f: self._handler_error(request, rule, f))  # fmt: skip
            return NOT_DONE_YET
        return self._coerce(request, result, res)

    def _coerce(self, request: JanusRequest, value: Any, res: Resolution) -> Any:
        if value is NOT_DONE_YET:
            return NOT_DONE_YET
        if isinstance(value, str):
            request.default_content_type(content_type(res.content_type or "text/html; charset=utf-8"))
            return value.encode("utf-8")
        if isinstance(value, (dict, list)):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(value).encode()
        if IResource.providedBy(value):
            return value.render(request)
        if value is None:
            return b""
        if isinstance(value, bytes):
            return value
        raise TypeError(
            f"a handler returned {type(value).__name__}; expected bytes, text, a dict, a Deferred or a resource"
        )
