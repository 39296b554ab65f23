"""What a webserv port answers: page files (cached, conditional), redirects, status pages in
HTML or JSON, and the exception rules' handlers."""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import NOT_DONE_YET

from janustls.core.identity import Subject, Verdict
from janustls.core.reasons import Refusal
from janustls.core.rules import Action, Exc, Kind, Resolution, Rule, RuleTable
from janustls.events import emit
from janustls.ports.base import PortRuntime, address_text
from janustls.ports.refusals import log_refusal
from janustls.ports.web.request import JanusRequest

__all__ = ["PageCache", "Responses"]

_MESSAGES = {
    Exc.SSLNOCERTERR: "This page needs a client certificate, and none was presented.",
    Exc.SSLCERTERR: "The client certificate was refused.",
    Exc.FORBIDDEN: "The client certificate does not give access to this page.",
}


# -- static pages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Page:
    body: bytes
    etag: bytes
    last_modified: bytes
    mtime: float
    content_type: str
    stamp: tuple[int, int]


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class PageCache:
    """Files of the procedure library, read once and re-read when they change (stat per request).

    Never served: a file outside the directory a rule names (symlinks resolved), a file
    janustls reads as key material or the port-definition file (`protected`), a dotfile,
    and a file holding a PEM private key.
    """

    def __init__(self, procs: Path, protected: Sequence[Path] = ()) -> None:
        self.root = Path(os.path.realpath(procs))
        self.protected = frozenset(os.path.realpath(self.root / p) for p in protected)
        self._pages: dict[str, _Page] = {}
        self._paths: dict[tuple[str, str], str | None] = {}

    def _resolve(self, relative: str, within: str) -> str | None:
        key = (relative, within)
        path = self._paths.get(key, "")
        if path == "":
            root = os.path.realpath(self.root / within)
            real = os.path.realpath(self.root / relative)
            path = None  # None: refused
            if inside(root, str(self.root)) and inside(real, root) and real not in self.protected:
                rest = os.path.relpath(real, root).split(os.sep)
                if not any(part.startswith(".") and part != "." for part in rest):
                    path = real
            if len(self._paths) > 4096:
                self._paths.clear()
            self._paths[key] = path
        return path

    def refused(self, relative: str, within: str = "") -> bool:
        """Whether a page exists but is one janustls never serves."""
        path = self._resolve(relative, within)
        if path is None:
            return os.path.exists(self.root / relative)
        try:
            with open(path, "rb") as f:
                return b"PRIVATE KEY-----" in f.read(1 << 20)
        except OSError:
            return False

    def get(self, relative: str, within: str = "") -> _Page | None:
        """The page at `relative` (to the procedure library), confined to the directory `within`."""
        path = self._resolve(relative, within)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not os.path.isfile(path):
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        page = self._pages.get(path)
        if page is not None and page.stamp == stamp:
            return page
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return None
        if b"PRIVATE KEY-----" in body:
            return None
        ctype, _ = mimetypes.guess_type(path)
        ctype = ctype or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        page = _Page(body, etag, http.datetimeToString(int(st.st_mtime)), int(st.st_mtime), ctype, stamp)
        if len(self._pages) > 1024:
            self._pages.clear()
        self._pages[path] = page
        return page


class Responses:
    """The responses of a webserv port: pages, redirects, status pages (HTML or JSON), exception handlers."""

    runtime: PortRuntime
    table: RuleTable
    pages: PageCache

    if TYPE_CHECKING:  # from the other parts of the port's factory (port.WebFactory: Dispatch, Actions, Responses)

        def _call(self, request: JanusRequest, rule: Rule, res: Resolution) -> Any: ...
        def _subject(self, request: JanusRequest) -> Subject: ...

    def _finish(self, request: JanusRequest, body: Any) -> None:
        """Answer with `body` (bytes, or None for none), in one write where nothing was written yet."""
        if body is NOT_DONE_YET or request.gone or request.finished:
            return
        request.respond(body or b"")

    def _page(
        self,
        request: JanusRequest,
        relative: str,
        ctype: str | None,
        status: int | None,
        *,
        conditional: bool,
        within: str = "",
    ) -> Any:
        page = self.pages.get(relative, within)
        if page is None:
            if self.pages.refused(relative, within):
                emit("janustls.web.page_refused", "port {port}: {peer} asked for {path}, which is never served",
                     port=self.runtime.port.name, peer=address_text(request.connection.peer), path=request.path.decode("latin-1"))  # fmt: skip
            return self._status(request, 404, "Not Found", "Nothing is served at this URL.")
        request.setHeader(b"content-type", (ctype or page.content_type).encode())
        if status is not None:
            request.setResponseCode(status)
        if conditional:
            request.setHeader(b"etag", page.etag)
            request.setHeader(b"last-modified", page.last_modified)
            request.setHeader(b"cache-control", b"no-cache")
            inm = request.getHeader(b"if-none-match")
            if inm is not None:
                if page.etag in [t.strip() for t in inm.split(b",")] or inm.strip() == b"*":
                    request.setResponseCode(http.NOT_MODIFIED)
                    return b""
            elif request.setLastModified(page.mtime) == http.CACHED:
                return b""
        else:
            request.setHeader(b"cache-control", b"no-store")
        return page.body

    def _redirect(self, request: JanusRequest, url: str, status: int) -> None:
        request.setResponseCode(status)
        request.setHeader(b"location", url.encode("utf-8"))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        self._finish(request, f'<!DOCTYPE html><a href="{html.escape(url)}">{html.escape(url)}</a>\n'.encode())

    def _forbidden(self, request: JanusRequest, verdict: Verdict) -> None:
        refusal = verdict.refusal(self._subject(request))
        assert refusal is not None
        self.runtime.refused += 1
        chain = request.connection.verified_chain
        log_refusal(
            self.runtime.port.name,
            address_text(request.connection.peer),
            refusal,
            chain[0] if chain else None,
            rule=verdict.rule,
        )
        self._exception(request, Exc.FORBIDDEN, refusal, verdict.rule)

    def _exception(self, request: JanusRequest, exc: Exc, refusal: Refusal, cause: str) -> None:
        """Answer with the port's handler for `exc`, or a plain page of the same status."""
        request.exception, request.refusal = exc, refusal
        rule = self.table.exception(exc)
        status = (rule.status if rule is not None and rule.status else None) or exc.default_status
        emit(
            "janustls.web.exception",
            "port {port}: {exception} for {peer} on {path}: {refusal} ({cause})",
            port=self.runtime.port.name,
            peer=address_text(request.connection.peer),
            exception=exc.value,
            path=request.path.decode("latin-1"),
            refusal=refusal,
            reason=refusal.reason.value,
            cause=cause,
            handler=rule.key if rule is not None else None,
        )
        if rule is None:
            self._status(
                request, status, http.RESPONSES.get(status, b"Error").decode(), _MESSAGES.get(exc, ""), exc=exc
            )
            return
        if rule.action is Action.REDIRECT:
            self._redirect(request, rule.target, rule.status or 302)
            return
        if rule.action is Action.PAGE and request.wants_json():
            self._status(
                request, status, http.RESPONSES.get(status, b"Error").decode(), _MESSAGES.get(exc, ""), exc=exc
            )
            return
        request.setResponseCode(status)
        res = Resolution(rule, (), None, rule.content_type)
        if rule.action is Action.PAGE:
            self._finish(request, self._page(request, rule.target, rule.content_type, status, conditional=False))
            return
        self._finish(request, self._call(request, rule, res))

    def _status(
        self,
        request: JanusRequest,
        status: int,
        title: str,
        message: str,
        *,
        exc: Exc | None = None,
        event: str | None = None,
    ) -> None:
        if event is not None:
            emit(event, "port {port}: {status} for {peer} on {path}", port=self.runtime.port.name, status=status,
                 peer=address_text(request.connection.peer), path=request.path.decode("latin-1"))  # fmt: skip
        request.setResponseCode(status)
        if status == 413:  # the rest of the body is not read: the connection closes after the answer
            request.setHeader(b"connection", b"close")
            if request.channel is not None:
                request.channel.persistent = False
        if request.wants_json():
            doc: dict[str, Any] = {"status": status, "title": title, "message": message}
            if exc is not None:
                doc["exception"] = exc.value
            if request.refusal is not None:
                doc["reason"] = request.refusal.reason.value
                doc["detail"] = str(request.refusal)
            request.setHeader(b"content-type", b"application/json")
            body = json.dumps(doc).encode()
        else:
            detail = (
                f"<p>Reason: {html.escape(request.refusal.reason.description)}</p>"
                if request.refusal is not None
                else ""
            )
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            body = (f"<!DOCTYPE html><html><head><title>{status} {html.escape(title)}</title></head>"
                    f"<body><h1>{status} {html.escape(title)}</h1><p>{html.escape(message)}</p>{detail}</body></html>\n").encode()  # fmt: skip
        self._finish(request, body)

    def _handler_error(self, request: JanusRequest, rule: Rule, failure: Failure) -> None:
        emit(
            "janustls.handler.error",
            "port {port}: handler {handler} raised for {peer}: {error}",
            LogLevel.error,
            port=self.runtime.port.name,
            handler=rule.value,
            peer=address_text(request.connection.peer),
            error=failure.getErrorMessage(),
            log_failure=failure,
        )
        if request.gone or request.finished:
            return
        if request.startedWriting:
            request.janus_protocol.close()
            return
        request.responseHeaders.removeHeader(b"content-type")
        request.default_content_type(None)
        self._status(request, 500, "Internal Server Error", "The handler for this URL failed; the error is logged.")

    def _failed(self, failure: Failure, request: JanusRequest) -> None:
        rule = request.rule or Rule(-1, "", "janustls", Kind.ON, None, "")
        self._handler_error(request, rule, failure)
