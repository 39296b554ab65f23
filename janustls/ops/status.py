"""The local status listener (`[status] listen = ...`): GET /status (JSON) and GET /metrics.

/status is for people and scripts (ports, their CAs with NumSigned as Janus STATUSCA
showed, open connections, certificate and CRL expiry); /metrics is the Prometheus
exposition of `janustls.ops.metrics`, rendered by prometheus-client.  `format_status`
turns a /status document into the table `janustls status` prints.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from janustls._reactor import reactor_or_global
from janustls.core.trust import fingerprint
from janustls.events import emit
from janustls.ops import metrics
from janustls.ops.build import BuiltPort, server_endpoint
from janustls.ops.ocspcheck import ocsp_state

__all__ = ["status_document", "StatusService", "format_status", "metrics_registry"]


def _iso(value: datetime.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def port_document(b: BuiltPort, now: datetime.datetime) -> dict[str, Any]:
    """One port's entry of /status."""
    p = b.definition
    tls = b.runtime.tls
    leaf = tls.material.leaf
    counts = dict(tls.trust.signed)
    listening = getattr(b, "listening", None)
    return {
        "name": p.name,
        "type": p.type.value,
        "listen": p.listen,
        "address": str(listening.getHost()) if listening is not None else None,
        "client_cert": p.client_cert.value,
        "open_connections": len(getattr(b.factory, "protocols", ())),
        "accepted": b.runtime.accepted,
        "refused": b.runtime.refused,
        "certificate": {
            "subject": leaf.subject.rfc4514_string(),
            "not_after": _iso(leaf.not_valid_after_utc),
            "days_left": round((leaf.not_valid_after_utc - now).total_seconds() / 86400, 1),
        },
        "cas": [
            {
                "subject": ca.subject.rfc4514_string(),
                "fingerprint": fingerprint(ca).hex(),
                "signed": counts.get(fingerprint(ca), 0),
                "not_after": _iso(ca.not_valid_after_utc),
            }
            for ca in tls.trust.cas
        ],
        "crls": [
            {
                "issuer": crl.issuer.rfc4514_string(),
                "last_update": _iso(crl.last_update_utc),
                "next_update": _iso(crl.next_update_utc),
                "expired": crl.next_update_utc is not None and crl.next_update_utc < now,
                "revoked": len(crl),
            }
            for crl in tls.trust.crls
        ],
        **_ocsp_document(b),
    }


def _ocsp_document(b: BuiltPort) -> dict[str, Any]:
    """OCSP settings, verdicts and the shared cache; the staple's state (only where they are on)."""
    doc: dict[str, Any] = {}
    p = b.definition
    if p.ocsp.value != "none":
        refused = dict(b.runtime.ocsp.refused) if b.runtime.ocsp is not None else {}
        doc["ocsp"] = {"scope": p.ocsp.value, "fail": p.ocsp_fail.value, "responder": p.ocsp_responder,
                       "refused": refused, "cache": ocsp_state()}  # fmt: skip
    if b.runtime.stapler is not None:
        doc["ocsp_staple"] = b.runtime.stapler.state()
    return doc


#: This process's reloads, from its `janustls.reload.*` events: what `janustls reload` waits for.
RELOADS: dict[str, Any] = {"started": 0, "finished": 0, "outcome": None, "errors": [], "time": None}
_reloads_watched = False


def _watch_reload(event: dict[str, Any]) -> None:
    event_id = event.get("event_id")
    if event_id == "janustls.reload.started":
        RELOADS["started"] += 1
    elif event_id in ("janustls.reload.done", "janustls.reload.failed"):
        RELOADS.update(finished=RELOADS["finished"] + 1, outcome=event_id.rsplit(".", 1)[1],
                       errors=list(event.get("errors") or []), time=_iso(datetime.datetime.now(datetime.UTC)))  # fmt: skip


def watch_reloads() -> None:
    """Record reload outcomes from now on (once per process)."""
    global _reloads_watched
    if not _reloads_watched:
        globalLogPublisher.addObserver(cast(ILogObserver, _watch_reload))
        _reloads_watched = True


def status_document(ports: Sequence[BuiltPort], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The /status JSON document for a set of running ports."""
    now = datetime.datetime.now(datetime.UTC)
    doc: dict[str, Any] = {"time": _iso(now), "pid": os.getpid(), "reload": dict(RELOADS),
                           "ports": [port_document(b, now) for b in ports]}  # fmt: skip
    if extra:
        doc.update(extra)
    return doc


def metrics_registry(ports: Callable[[], Sequence[BuiltPort]]) -> CollectorRegistry:
    """What /metrics exposes: the counters (added up across workers in multi-process mode) and the ports' state."""
    registry = CollectorRegistry(auto_describe=False)
    directory = metrics.multiprocess_dir()
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Forward(metrics.REGISTRY))
    registry.register(metrics.StateCollector(ports, live=not directory))
    return registry


def merge_live_counts(doc: dict[str, Any], registry: CollectorRegistry) -> dict[str, Any]:
    """With worker processes the parent's own ports never serve: take the live numbers
    (open connections, accepted, refused, NumSigned) from the workers' metrics."""
    totals: dict[tuple[str, str], float] = {}
    signed: dict[tuple[str, str], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            port = sample.labels.get("port", "")
            if sample.name == "janustls_connections_open":
                totals[(port, "open")] = totals.get((port, "open"), 0) + sample.value
            elif sample.name == "janustls_handshakes_total":
                totals[(port, "accepted")] = totals.get((port, "accepted"), 0) + sample.value
            elif sample.name == "janustls_refusals_total":
                totals[(port, "refused")] = totals.get((port, "refused"), 0) + sample.value
            elif sample.name == "janustls_ca_signed":
                signed[(port, sample.labels.get("ca", ""))] = (
                    signed.get((port, sample.labels.get("ca", "")), 0) + sample.value
                )
    for p in doc["ports"]:
        p["open_connections"] = int(totals.get((p["name"], "open"), 0))
        p["accepted"] = int(totals.get((p["name"], "accepted"), 0))
        p["refused"] = int(totals.get((p["name"], "refused"), 0))
        for ca in p["cas"]:
            ca["signed"] = int(signed.get((p["name"], ca["subject"]), 0))
    return doc


class _Forward:
    """Expose another registry's metrics from this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Any:
        return self._registry.collect()


class _Status(Resource):
    isLeaf = True

    def __init__(self, document: Callable[[], dict[str, Any]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self._document = document

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._document(), indent=2).encode() + b"\n"


class _Metrics(Resource):
    """prometheus-client's exposition, rendered in the reactor thread (the ports' state is read there)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class StatusService(service.Service):
    """The status listener; `ports` is read on every request, so reloads show at once."""

    name = "status"

    def __init__(self, listen: str, ports: Callable[[], Sequence[BuiltPort]], reactor: Any = None,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:  # fmt: skip
        self.listen = listen
        self.ports = ports
        self.extra = extra or (dict)
        self.started = time.time()
        self._reactor = reactor
        self.listening: IListeningPort | None = None
        self._opened: IListeningPort | None = None

    def site(self) -> Site:
        root = Resource()
        registry = metrics_registry(self.ports)

        def document() -> dict[str, Any]:
            doc = status_document(self.ports(), {"started": self.started, **self.extra()})
            return merge_live_counts(doc, registry) if metrics.multiprocess_dir() else doc

        root.putChild(b"status", _Status(document))
        root.putChild(b"metrics", _Metrics(registry))
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]  # scrapes are not news
        return site

    def open(self) -> defer.Deferred[IListeningPort]:
        """Bind the listener (before the service starts, so a reload can refuse an address that is
        taken while nothing has changed yet); `janustls.status.failed` when it cannot."""
        self._reactor = reactor_or_global(self._reactor)

        def failed(failure: Any) -> Any:
            emit("janustls.status.failed", "status: cannot listen on {listen}: {error}", LogLevel.critical,
                 listen=self.listen, error=failure.getErrorMessage())  # fmt: skip
            return failure

        d = defer.maybeDeferred(lambda: server_endpoint(self._reactor, self.listen).listen(self.site()))
        return d.addErrback(failed)

    def adopt(self, listening: IListeningPort) -> None:
        """Serve on a listener `open` bound."""
        self._opened = listening

    def privilegedStartService(self) -> None:
        """Bind here, like the ports: a status address that cannot be bound stops the start."""
        service.Service.privilegedStartService(self)
        if self._opened is None:
            failures: list[Any] = []
            self.open().addCallbacks(self.adopt, failures.append)
            if failures:
                failures[0].raiseException()

    def startService(self) -> Any:
        service.Service.startService(self)
        metrics.install_observer()
        watch_reloads()
        if self._opened is not None:
            self._serving(self._opened)
            self._opened = None
            return defer.succeed(None)
        return self.open().addCallback(self._serving)

    def _serving(self, listening: IListeningPort) -> None:
        self.listening = listening
        emit("janustls.status.listening", "status: /status and /metrics on {address}", address=str(listening.getHost()))

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None


# -- for people: `janustls status` ---------------------------------------------------------


def _table(rows: list[list[str]], head: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()] + [
        fmt.format(*(str(c) for c in r)).rstrip() for r in rows
    ]


def format_status(doc: dict[str, Any]) -> str:
    """A /status document as tables: ports, then CAs with NumSigned, then CRLs."""
    out = [f"janustls status at {doc.get('time')} (pid {doc.get('pid')}"
           + (f", {len(doc['workers'])} workers" if doc.get("workers") else "") + ")", ""]  # fmt: skip
    ports = doc.get("ports", [])
    out += _table(
        [
            [
                p["name"],
                p["type"],
                p.get("address") or p["listen"],
                p["client_cert"],
                p["open_connections"],
                p["accepted"],
                p["refused"],
                f"{p['certificate']['not_after']} ({p['certificate']['days_left']}d)",
            ]
            for p in ports
        ],
        ["PORT", "TYPE", "ADDRESS", "CLIENT_CERT", "OPEN", "ACCEPTED", "REFUSED", "CERTIFICATE EXPIRES"],
    )
    cas = [[p["name"], ca["subject"], ca["signed"], ca["not_after"]] for p in ports for ca in p["cas"]]
    if cas:
        out += [""] + _table(cas, ["PORT", "CA", "NUMSIGNED", "EXPIRES"])
    crls = [[p["name"], c["issuer"], c["revoked"], c["next_update"], "EXPIRED" if c["expired"] else "ok"]
            for p in ports for c in p["crls"]]  # fmt: skip
    if crls:
        out += [""] + _table(crls, ["PORT", "CRL ISSUER", "REVOKED", "NEXT UPDATE", "STATE"])
    return "\n".join(out) + "\n"
