"""CRLs fetched from URLs (`crl_url = ...`), cached on disk, refreshed on an interval.

Each URL has a cache file in the procedure library's `.crl-cache/` directory, and the
port-definition reader lists that file among the port's CRLs, so everything else
(trust, the CRL watcher's swap on change, explain, status) treats it as any CRL file.
What this module adds is getting the file, on Twisted's HTTP client (never a blocking
call on the reactor): at start and then every `crl_refresh` seconds in the background
(the CRL watcher), with conditional requests
(ETag / Last-Modified, so an unchanged CRL costs a 304).  A fetched CRL is used only
if it parses, verifies when its issuer is a CA added to the port (OpenSSL verifies the
others against the client's chain), and is not older than the cached one (no replay of
a CRL from before a revocation); it replaces the cache file atomically, and the CRL
watcher picks the change up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from twisted.internet import defer
from twisted.python.failure import Failure

from janustls.core.config import CRL_CACHE_DIR, Definitions, PortDefinition, crl_cache_path
from janustls.core.materials import load_certificates, parse_crls
from janustls.errors import MaterialError
from janustls.events import emit
from janustls.ops import httpfetch

__all__ = ["prefetch", "missing", "fetch", "store", "refresh", "probe", "CACHE_DIR", "FETCH_TIMEOUT"]

CACHE_DIR = CRL_CACHE_DIR
FETCH_TIMEOUT = 10.0
MAX_CRL_BYTES = 64 * 1024 * 1024


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _parse(data: bytes) -> x509.CertificateRevocationList:
    return parse_crls(data)[0]


def _issued_by_port_ca(crl: x509.CertificateRevocationList, port: PortDefinition) -> bool | None:
    """True: signed by a CA added to the port; False: a port CA of that name did not sign it;
    None: issued by a CA the port does not list (an intermediate): OpenSSL checks its
    signature against the client's chain when it uses it."""
    known = False
    for path in port.addca:
        try:
            cas = load_certificates(path)
        except MaterialError:
            continue
        for ca in cas:
            if ca.subject == crl.issuer:
                known = True
                try:
                    if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]  # a CA's key signs: never the X25519/X448 kinds the stub admits
                        return True
                except (TypeError, ValueError):
                    continue
    return False if known else None


def _conditional_headers(path: Path) -> dict[str, str]:
    headers: dict[str, str] = {}
    meta_file = _meta_path(path)
    if path.exists() and meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            meta = {}
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    return headers


def fetch(
    port: PortDefinition, url: str, procs: Path, reactor: Any, timeout: float = FETCH_TIMEOUT
) -> defer.Deferred[str]:
    """Fetch one CRL URL into its cache file, on Twisted's HTTP client (the reactor never
    waits): fires "changed" or "unchanged"; fails with MaterialError."""
    path = crl_cache_path(procs, url)
    d = httpfetch.fetch(reactor, url, headers=_conditional_headers(path), timeout=timeout, max_size=MAX_CRL_BYTES)

    def got(answer: httpfetch.Fetched) -> str:
        if answer.code == 304:
            return "unchanged"
        if answer.code != 200:
            raise MaterialError(f"cannot fetch {url}: HTTP {answer.code}")
        return store(port, url, procs, answer.body, answer.headers.get("etag"), answer.headers.get("last-modified"))

    def failed(failure: Failure) -> NoReturn:
        if failure.check(MaterialError):
            failure.raiseException()
        raise MaterialError(failure.getErrorMessage())

    return d.addCallback(got).addErrback(failed)


def store(port: PortDefinition, url: str, procs: Path, data: bytes, etag: str | None, modified: str | None) -> str:
    """Check a fetched CRL and replace the cache file atomically: "changed" or "unchanged".

    Raises MaterialError for anything that is not a usable, newer-or-equal CRL.
    """
    path = crl_cache_path(procs, url)
    meta_file = _meta_path(path)
    if len(data) > MAX_CRL_BYTES:
        raise MaterialError(f"{url} sent more than {MAX_CRL_BYTES} bytes")
    try:
        crl = _parse(data)
    except ValueError as e:
        raise MaterialError(f"{url} did not send a CRL: {e}")
    if _issued_by_port_ca(crl, port) is False:
        raise MaterialError(
            f"the CRL from {url} ({crl.issuer.rfc4514_string()}) does not verify with the port's CA of that name"
        )
    if path.exists():
        try:
            cached = _parse(path.read_bytes())
        except ValueError:
            cached = None
        if cached is not None and cached.issuer == crl.issuer and crl.last_update_utc < cached.last_update_utc:
            raise MaterialError(
                f"the CRL from {url} is older than the cached one (lastUpdate {crl.last_update_utc:%Y-%m-%d %H:%M})"
            )
    if path.exists() and path.read_bytes() == data:
        changed = "unchanged"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: the watcher never reads half a file
        changed = "changed"
    meta_file.write_text(json.dumps({"url": url, "etag": etag, "last_modified": modified}))
    return changed


def _urls(ports: Iterable[PortDefinition]) -> list[tuple[PortDefinition, str]]:
    return [(p, url) for p in ports for url in p.crl_url]


def missing(
    definitions: Definitions, ports: Sequence[PortDefinition] | None = None
) -> list[tuple[PortDefinition, str]]:
    """The CRL URLs that have no cached copy yet: their port refuses the clients that need
    the CRL (crl_unavailable) until the first fetch arrives."""
    return [(p, url) for p, url in _urls(ports if ports is not None else definitions.ports)
            if not crl_cache_path(definitions.procs, url).exists()]  # fmt: skip


def prefetch(
    definitions: Definitions, reactor: Any, ports: Sequence[PortDefinition] | None = None
) -> defer.Deferred[None]:
    """Fetch the CRL URLs that have no cached copy yet, all at once, each bounded by
    FETCH_TIMEOUT; fires when all have answered (failures are logged, never raised).

    A reload waits on this (the reactor keeps serving meanwhile) so that a new URL is
    in force as the new definitions take over; a cached one is refreshed by the watcher.
    """

    def one(port: PortDefinition, url: str) -> defer.Deferred[None]:
        d = fetch(port, url, definitions.procs, reactor)
        return d.addCallback(lambda outcome: _fetched(port, url, outcome)).addErrback(
            lambda f: _fetch_failed(port, url, f, "no cached copy yet: its CA's clients are refused until it arrives")
        )

    ds = [one(port, url) for port, url in missing(definitions, ports)]
    return defer.gatherResults(ds).addCallback(lambda _: None)


def _fetched(port: PortDefinition, url: str, outcome: str) -> None:
    emit("janustls.crl.fetched", "port {port}: CRL from {url}: {outcome}", port=port.name, url=url, outcome=outcome)


def _fetch_failed(port: PortDefinition, url: str, failure: Failure, effect: str) -> None:
    emit("janustls.crl.fetch_failed", "port {port}: {error}; {effect}", port=port.name, url=url,
         error=failure.getErrorMessage(), effect=effect)  # fmt: skip


def refresh(definitions: Definitions, port: PortDefinition, reactor: Any) -> defer.Deferred[Any]:
    """In the background: fetch a port's CRL URLs; failures are logged."""

    def one(url: str) -> defer.Deferred[None]:
        path = crl_cache_path(definitions.procs, url)
        effect = (
            "keeping the cached copy"
            if path.exists()
            else "no cached copy yet: its CA's clients are refused until it arrives"
        )
        d = fetch(port, url, definitions.procs, reactor)
        return d.addCallback(lambda outcome: _fetched(port, url, outcome) if outcome == "changed" else None).addErrback(
            lambda f: _fetch_failed(port, url, f, effect)
        )

    return defer.DeferredList([one(url) for url in port.crl_url])


def probe(
    definitions: Definitions, reactor: Any, timeout: float = FETCH_TIMEOUT
) -> defer.Deferred[list[tuple[PortDefinition, str, str | None]]]:
    """For `janustls check`: fetch every CRL URL once (nothing is written) and say what came:
    (port, url, None) for a usable CRL, (port, url, why not) otherwise; all at once, each bounded."""

    def one(port: PortDefinition, url: str) -> defer.Deferred[tuple[PortDefinition, str, str | None]]:
        d = httpfetch.fetch(reactor, url, timeout=timeout, max_size=MAX_CRL_BYTES)

        def got(answer: httpfetch.Fetched) -> tuple[PortDefinition, str, str | None]:
            if answer.code != 200:
                return port, url, f"cannot fetch {url}: HTTP {answer.code}"
            try:
                crl = _parse(answer.body)
            except ValueError as e:
                return port, url, f"{url} did not send a CRL: {e}"
            if _issued_by_port_ca(crl, port) is False:
                return (
                    port,
                    url,
                    f"the CRL from {url} ({crl.issuer.rfc4514_string()}) does not verify with the port's CA of that name",
                )
            return port, url, None

        return d.addCallbacks(got, lambda f: (port, url, f.getErrorMessage()))

    return defer.gatherResults([one(p, url) for p, url in _urls(definitions.ports)])
