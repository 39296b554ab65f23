"""How a webserv port serves a request: the rule table decides, identity rules judge, and the
rule's action (or an exception rule) answers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from janustls.core.identity import Policy, Subject, Verdict
from janustls.core.reasons import Reason, Refusal
from janustls.core.rules import Action, Exc, Kind, Resolution, Rule, RuleTable
from janustls.core.webpath import PathError, encode, normal_form
from janustls.errors import CertificateRequestTimeout
from janustls.events import emit
from janustls.ports.access import decide, peer_ip
from janustls.ports.base import PortRuntime, address_text
from janustls.ports.web.request import JanusRequest

__all__ = ["Dispatch", "DispatchResource"]


class Dispatch:
    """The request pipeline of a webserv port: normal path, gate, rule, identity verdict, mid-connection
    request, then the rule's action or the exception it leads to."""

    runtime: PortRuntime
    table: RuleTable
    policy: Policy | None

    #: The body limit per (method, request target), bounded: see `limits_for`.
    _limits_seen: dict[tuple[bytes, bytes], int]

    if TYPE_CHECKING:  # from the other parts of the port's factory (port.WebFactory: Dispatch, Actions, Responses)
        reactor: Any

        def _run(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any: ...
        def _call(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any: ...
        def _finish(self, request: JanusRequest, body: Any) -> None: ...
        def _redirect(self, request: JanusRequest, url: str, status: int) -> None: ...
        def _forbidden(self, request: JanusRequest, verdict: Verdict) -> None: ...
        def _exception(self, request: JanusRequest, exc: Exc, refusal: Refusal, cause: str) -> None: ...
        def _status(
            self,
            request: JanusRequest,
            status: int,
            title: str,
            message: str,
            *,
            exc: Exc | None = None,
            event: str | None = None,
        ) -> None: ...
        def _failed(self, failure: Failure, request: JanusRequest) -> None: ...

    def _resolve_raw(self, method: bytes, path: bytes) -> Resolution | None:
        try:
            normal = normal_form(path.split(b"?", 1)[0])[0]
        except PathError:
            return None  # answered 400 once the request is served
        return self.table.resolve(method.decode("latin-1"), normal)

    def limits_for(self, method: bytes, path: bytes) -> int:
        """`body_limit`, remembered (a request held for a certificate is bound by the same).

        Asked for every request with a body before the body is read; keep-alive clients repeat
        their request lines, so the answers are kept per (method, request target), a bounded
        number (a reload builds a new factory, so they never outlive the rules they came from).
        """
        key = (method, path)
        found = self._limits_seen.get(key)
        if found is None:
            found = self.body_limit(method, path)
            if len(path) <= 512:
                if len(self._limits_seen) >= 4096:
                    self._limits_seen.clear()
                self._limits_seen[key] = found
        return found

    def body_limit(self, method: bytes, path: bytes) -> int:
        """The largest body a request may carry: its rule's max_body, else the port's."""
        res = self._resolve_raw(method, path)
        if res is not None and res.action is not None:
            return res.action.body_limit(self.runtime.port.max_body)
        return self.runtime.port.max_body

    def serve(self, request: JanusRequest) -> Any:
        """Render one request: the fast path when nothing needs waiting for, else a coroutine."""
        proto = request.janus_protocol
        if request.normal_path is None:
            try:
                # handlers see the normal form too (written back as a URL path)
                request.normal_path, request.path = normal_form(request.path)
            except PathError as e:
                self._status(
                    request, 400, "Bad Request", f"This request path is refused: {e}.", event="janustls.web.bad_path"
                )
                return NOT_DONE_YET
        gate = proto.gate()
        res = self.table.resolve(request.method.decode("latin-1"), request.normal_path)
        rule = res.action
        verdict = proto._port_verdict
        if (
            gate is None
            and (
                self.policy is None
                or (verdict is not None and verdict[1].allowed and verdict[0] is proto.connection.certificate())  # type: ignore[union-attr]  # a request has a connection (the TLS handshake is done)
            )
            and rule is not None
            and res.access is None
            and rule.allow is None
            and rule.client_cert is None
            and rule.action is Action.CALL
            and not request.over_limit
        ):
            request.rule, request.rule_parts = rule, res.parts
            return self._call(request, rule, res)
        defer.ensureDeferred(self._serve(request, gate, res)).addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _serve(self, request: JanusRequest, gate: tuple[Exc, Refusal, str] | None, res: Resolution) -> None:
        proto = request.janus_protocol
        conn = proto.connection
        assert conn is not None
        if gate is not None:
            return self._exception(request, *gate)
        rule = res.action
        if rule is not None and rule.client_cert is not None:
            # Ask first: identity rules then judge the certificate the client sends.
            request.rule, request.rule_parts = rule, res.parts
            if request.over_limit:
                return self._status(
                    request,
                    413,
                    "Content Too Large",
                    f"A request on this path may carry at most {rule.body_limit(self.runtime.port.max_body)} bytes.",
                    event="janustls.web.body_too_large",
                )
            done = await self._ask(request, rule)
            if done:
                return None
        if self.policy is not None:
            verdict = proto._port_verdict
            if verdict is None or verdict[0] is not conn.certificate():
                v = await decide(self.policy, self._subject(request), self.reactor)
                verdict = proto._port_verdict = (conn.certificate(), v)
            if not verdict[1].allowed:
                return self._forbidden(request, verdict[1])
        if rule is None:
            return self._status(request, 404, "Not Found", "Nothing is served at this URL.")
        request.rule, request.rule_parts = rule, res.parts
        if res.access is not None:
            access = res.access
            assert access.allow is not None
            if access.kind is Kind.ALLOW:
                v = await decide(access.allow, self._subject(request), self.reactor)
                if not v.allowed:
                    return self._forbidden(request, v)
            else:
                v = await decide(access.allow, self._subject(request), self.reactor)
                if v.allowed:  # the DISALLOW expression matched this client
                    refused = Verdict(False, access.allow.rule, Reason.NOT_ALLOWED)
                    return self._forbidden(request, refused)
        if rule.allow is not None:
            v = await decide(rule.allow, self._subject(request), self.reactor)
            if not v.allowed:
                return self._forbidden(request, v)
        result = self._run(request, rule, res)
        if result is NOT_DONE_YET:
            return None
        self._finish(request, result)
        return None

    async def _ask(self, request: JanusRequest, rule: Rule) -> bool:
        """Per-path certificate: ask mid-connection if needed; True when a response was already given."""
        conn = request.connection
        if conn.cert_levels():
            return False
        retry = getattr(request.channel, "retry_over_http11", None)  # an HTTP/2 stream (h2channel.H2Stream)
        if retry is not None and retry(request, rule):
            return True
        handler = self.table.exception(Exc.SSLNOCERTERR)
        require = rule.client_cert == "require"
        can, why = conn.can_request_certificate()
        if not can:
            if not require:
                return False
            if rule.fallback:
                emit("janustls.web.fallback", "port {port}: {peer} cannot be asked for a certificate ({why}); redirected to {url}",
                     port=self.runtime.port.name, peer=address_text(conn.peer), why=why, url=rule.fallback, path=request.path.decode("latin-1"))  # fmt: skip
                self._redirect(request, rule.substitute([encode(p) for p in request.rule_parts], rule.fallback), 302)
                return True
            self._exception(
                request,
                Exc.SSLNOCERTERR,
                Refusal(Reason.NO_CERTIFICATE, None, None, why),
                rule.describe(self.table.section),
            )
            return True
        strict = require and handler is None  # no certificate: the TLS layer refuses and closes
        try:
            await conn.request_certificate(strict)
        except CertificateRequestTimeout as e:
            self._exception(
                request,
                Exc.SSLNOCERTERR,
                Refusal(Reason.NO_CERTIFICATE, None, None, str(e)),
                rule.describe(self.table.section),
            )
            return True
        proto = request.janus_protocol
        if request.gone or proto.lost:
            return True  # nobody to answer: dropped quietly
        if conn.cert_levels():
            return False
        refusal = proto.transport.refusal
        if refusal is not None and self.table.exception(Exc.SSLCERTERR) is not None:
            self._exception(request, Exc.SSLCERTERR, refusal, rule.describe(self.table.section))
            return True
        if strict:  # refused at the TLS layer (janustls.request.refused), closed if still open
            proto.close()
            return True
        if not require:
            return False
        self._exception(
            request,
            Exc.SSLNOCERTERR,
            Refusal(Reason.NO_CERTIFICATE, None, None, Reason.NO_CERTIFICATE.description),
            rule.describe(self.table.section),
        )
        return True

    def _subject(self, request: JanusRequest) -> Subject:
        conn = request.connection
        return Subject(conn.verified_chain, peer_ip(conn.peer), None, request)


class DispatchResource(Resource):
    """The site's one resource: every request goes to the port's `serve`."""

    isLeaf = True

    def __init__(self, factory: Dispatch) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self.factory = factory

    def render(self, request: JanusRequest) -> Any:
        return self.factory.serve(request)
