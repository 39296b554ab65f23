"""Prometheus metrics, counted from the log events rather than from calls in every code path.

Every outcome janustls cares about is already an event with a stable `event_id`
(`janustls.events`), so one log observer (`observe`) turns events into counters and
the ports stay free of metrics code.  What is state rather than an event (expiry
dates, open connections, NumSigned per CA) is read on each scrape by `StateCollector`.

With worker processes (`--workers N`) the counters are prometheus-client's
multi-process values: `enable_multiprocess(directory)` must run before this module
is imported, and the parent's /metrics adds the workers' files up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.logger import ILogObserver, globalLogPublisher

from janustls.core.trust import fingerprint
from janustls.ops.build import BuiltPort
from janustls.ops.ocspcheck import CACHE

__all__ = [
    "REGISTRY",
    "observe",
    "install_observer",
    "midconn_request",
    "StateCollector",
    "multiprocess_dir",
]

#: The registry of this process's own metrics (not prometheus-client's global one, so
#: embedding applications keep theirs apart).
REGISTRY = CollectorRegistry(auto_describe=True)

HANDSHAKES = Counter(
    "janustls_handshakes", "TLS handshakes completed, by port and TLS version", ["port", "version"], registry=REGISTRY
)
REFUSALS = Counter(
    "janustls_refusals",
    "Clients refused for their certificate, by port and typed reason",
    ["port", "reason"],
    registry=REGISTRY,
)
HANDSHAKE_FAILURES = Counter(
    "janustls_handshake_failures",
    "Handshakes that ended without a certificate verdict: failed (protocol, garbage), timeout, abandoned",
    ["port", "kind"],
    registry=REGISTRY,
)
LIMITED = Counter(
    "janustls_connections_limited",
    "Connections closed at once by a limit: max_connections or max_connections_per_client",
    ["port", "limit"],
    registry=REGISTRY,
)
CONNECTIONS = Counter(
    "janustls_connections", "Connections that completed their handshake and have ended", ["port"], registry=REGISTRY
)
OPEN = Gauge(
    "janustls_connections_open",
    "Connections past their handshake and still open",
    ["port"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
BYTES = Counter(
    "janustls_bytes",
    "Application bytes of ended connections, by direction (received, sent)",
    ["port", "direction"],
    registry=REGISTRY,
)
RELOADS = Counter(
    "janustls_reloads", "Reloads of the port-definition file, by outcome (done, failed)", ["outcome"], registry=REGISTRY
)
MIDCONN = Counter(
    "janustls_midconn_requests",
    "Mid-connection certificate requests, by outcome (certificate, no_certificate, refused, unsupported, "
    "declined, timeout, closed)",
    ["port", "outcome"],
    registry=REGISTRY,
)
OCSP_ANSWERS = Counter(
    "janustls_ocsp_answers",
    "OCSP responders' answers about client certificates, by status (good, revoked, unavailable)",
    ["port", "status"],
    registry=REGISTRY,
)
EVENTS = Counter("janustls_events", "Every catalogued log event, by identifier", ["event_id"], registry=REGISTRY)


def midconn_request(port: str, outcome: str) -> None:
    """Count one mid-connection certificate request's outcome.

    The observer calls it for every `janustls.request.*` event, so code that emits
    those events needs nothing else; code that does not emit them may call it.
    """
    MIDCONN.labels(port, outcome).inc()


def _last(event_id: str) -> str:
    return event_id.rsplit(".", 1)[-1]


def observe(event: dict[str, Any]) -> None:
    """A twisted.logger observer: count one event (others, without event_id, are ignored)."""
    eid = event.get("event_id")
    if not isinstance(eid, str) or not eid.startswith("janustls."):
        return
    port = str(event.get("port") or "")
    EVENTS.labels(eid).inc()
    if eid == "janustls.conn.accepted":
        HANDSHAKES.labels(port, str(event.get("version") or "")).inc()
        OPEN.labels(port).inc()
    elif eid == "janustls.conn.closed":
        OPEN.labels(port).dec()
        CONNECTIONS.labels(port).inc()
        BYTES.labels(port, "received").inc(int(event.get("bytes_in") or 0))
        BYTES.labels(port, "sent").inc(int(event.get("bytes_out") or 0))
    elif eid.startswith("janustls.refused."):
        REFUSALS.labels(port, str(event.get("reason") or _last(eid))).inc()
    elif eid in ("janustls.handshake.failed", "janustls.handshake.timeout", "janustls.handshake.abandoned"):
        HANDSHAKE_FAILURES.labels(port, _last(eid)).inc()
    elif eid == "janustls.conn.limit":
        LIMITED.labels(port, str(event.get("limit_key") or "max_connections")).inc()
    elif eid.startswith("janustls.request."):
        midconn_request(port, _last(eid))
    elif eid == "janustls.ocsp.answer":
        OCSP_ANSWERS.labels(port, str(event.get("status") or "")).inc()
    elif eid in ("janustls.reload.done", "janustls.reload.failed"):
        RELOADS.labels(_last(eid)).inc()


_installed = False


def install_observer() -> None:
    """Count events from now on (once per process; later calls do nothing)."""
    global _installed
    if not _installed:
        globalLogPublisher.addObserver(cast(ILogObserver, observe))
        _installed = True


def _ts(value: Any) -> float:
    return float(value.timestamp())


class StateCollector(Collector):
    """What is state, not events: read from the running ports on each scrape.

    `ports` is a callable so that a reload (which replaces the list) is seen at once.
    """

    def __init__(self, ports: Any, live: bool = True) -> None:
        self._ports = ports
        # False in the parent of worker processes: NumSigned and open connections live
        # in the workers and come from their multi-process metrics instead.
        self._live = live

    def collect(self) -> Iterator[Metric]:
        cert = GaugeMetricFamily(
            "janustls_certificate_expiry_timestamp_seconds",
            "The port's server certificate notAfter",
            labels=["port", "subject"],
        )
        ca = GaugeMetricFamily(
            "janustls_ca_expiry_timestamp_seconds", "A CA added to the port: its notAfter", labels=["port", "ca"]
        )
        crl = GaugeMetricFamily(
            "janustls_crl_next_update_timestamp_seconds", "A CRL of the port: its nextUpdate", labels=["port", "issuer"]
        )
        signed = GaugeMetricFamily(
            "janustls_ca_signed",
            "Accepted client chains per trust anchor (Janus STATUSCA NumSigned)",
            labels=["port", "ca"],
        )
        tcp = GaugeMetricFamily(
            "janustls_tcp_connections_open",
            "TCP connections open on the port, handshaking ones included",
            labels=["port"],
        )
        built: Iterable[BuiltPort] = list(self._ports())
        for b in built:
            name = b.definition.name
            tls = b.runtime.tls
            leaf = tls.material.leaf
            cert.add_metric([name, leaf.subject.rfc4514_string()], _ts(leaf.not_valid_after_utc))
            counts = dict(tls.trust.signed)
            for c in tls.trust.cas:
                subject = c.subject.rfc4514_string()
                ca.add_metric([name, subject], _ts(c.not_valid_after_utc))
                signed.add_metric([name, subject], float(counts.get(fingerprint(c), 0)))
            for r in tls.trust.crls:
                if r.next_update_utc is not None:
                    crl.add_metric([name, r.issuer.rfc4514_string()], _ts(r.next_update_utc))
            tcp.add_metric([name], float(len(getattr(b.factory, "protocols", ()))))
        if self._live:
            cache = GaugeMetricFamily("janustls_ocsp_cache_entries", "Verified OCSP answers held in memory (all ports)")
            cache.add_metric([], len(CACHE))
            yield cache
        yield from (cert, ca, crl, signed, tcp) if self._live else (cert, ca, crl)


def multiprocess_dir() -> str | None:
    """The prometheus-client multi-process directory of this process, if any."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
