"""CRLs fetched from URLs (`crl_url = ...`), cached on disk, refreshed on an interval.

Each URL has a cache file in the procedure library's `.crl-cache/` directory, and the
port-definition reader lists that file among the port's CRLs, so everything else
(trust, the CRL watcher's swap on change, explain, status) treats it as any CRL file.
What this module adds is getting the file: once at start (blocking, before the ports
are built; a URL that cannot be fetched and has no cached copy is a located error),
then every `crl_refresh` seconds in the background with conditional requests
(ETag / Last-Modified, so an unchanged CRL costs a 304).  A fetched CRL is used only
if it parses, verifies when its issuer is a CA added to the port (OpenSSL verifies the
others against the client's chain), and is not older than the cached one (no replay of
a CRL from before a revocation); it replaces the cache file atomically, and the CRL
watcher picks the change up.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence

from cryptography import x509

from janustls.config import Definitions, PortDefinition, crl_cache_path
from janustls.errors import ConfigError, ConfigErrors, MaterialError
from janustls.events import emit
from janustls.materials import load_certificates

__all__ = ["cache_path", "prefetch", "fetch", "CACHE_DIR", "FETCH_TIMEOUT"]

CACHE_DIR = ".crl-cache"
FETCH_TIMEOUT = 10.0
MAX_CRL_BYTES = 64 * 1024 * 1024


def cache_path(procs: Path, url: str) -> Path:
    """Where the CRL fetched from `url` is kept (the reader lists it among the port's CRLs)."""
    return crl_cache_path(procs, url)


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _parse(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN X509 CRL-----" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


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
                    if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                        return True
                except (TypeError, ValueError):
                    continue
    return False if known else None


def fetch(port: PortDefinition, url: str, procs: Path, timeout: float = FETCH_TIMEOUT) -> str:
    """Fetch one CRL URL into its cache file: "changed", "unchanged"; raises MaterialError.

    Blocking (urllib): call it at start, or from a thread.
    """
    path = cache_path(procs, url)
    meta_file = _meta_path(path)
    headers = {"User-Agent": "janustls"}
    if path.exists() and meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            meta = {}
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http and https only, checked by the reader)
            data = response.read(MAX_CRL_BYTES + 1)
            etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return "unchanged"
        raise MaterialError(f"cannot fetch {url}: HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise MaterialError(f"cannot fetch {url}: {getattr(e, 'reason', e)}")
    if len(data) > MAX_CRL_BYTES:
        raise MaterialError(f"{url} sent more than {MAX_CRL_BYTES} bytes")
    try:
        crl = _parse(data)
    except ValueError as e:
        raise MaterialError(f"{url} did not send a CRL: {e}")
    if _issued_by_port_ca(crl, port) is False:
        raise MaterialError(f"the CRL from {url} ({crl.issuer.rfc4514_string()}) does not verify with the port's CA of that name")
    if path.exists():
        try:
            cached = _parse(path.read_bytes())
        except ValueError:
            cached = None
        if cached is not None and cached.issuer == crl.issuer and crl.last_update_utc < cached.last_update_utc:
            raise MaterialError(f"the CRL from {url} is older than the cached one (lastUpdate {crl.last_update_utc:%Y-%m-%d %H:%M})")
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


def prefetch(definitions: Definitions, ports: Sequence[PortDefinition] | None = None) -> None:
    """Before ports are built: fetch the CRL URLs that have no cached copy yet (blocking).

    Cached ones are refreshed in the background by the CRL watcher, so a start or a
    reload never waits for a server that already gave its CRL once.
    """
    errors: list[ConfigError] = []
    for port, url in _urls(ports if ports is not None else definitions.ports):
        if cache_path(definitions.procs, url).exists():
            continue
        try:
            outcome = fetch(port, url, definitions.procs)
        except MaterialError as e:
            if cache_path(definitions.procs, url).exists():
                emit("janustls.crl.fetch_failed", "port {port}: {error}; using the cached copy", port=port.name,
                     url=url, error=str(e))  # fmt: skip
                continue
            errors.append(ConfigError(port.source, port.section, "crl_url", f"{e} (and no cached copy)"))
            continue
        emit("janustls.crl.fetched", "port {port}: CRL from {url}: {outcome}", port=port.name, url=url, outcome=outcome)
    if errors:
        raise ConfigErrors(errors)


def refresh(definitions: Definitions, port: PortDefinition, reactor: Any) -> Any:
    """In the background: fetch a port's CRL URLs in the reactor's thread pool; failures are logged."""
    from twisted.internet import threads

    def one(url: str) -> Any:
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), fetch, port, url, definitions.procs)

        def done(outcome: str) -> None:
            if outcome == "changed":
                emit("janustls.crl.fetched", "port {port}: CRL from {url}: {outcome}", port=port.name, url=url,
                     outcome=outcome)  # fmt: skip

        def failed(failure: Any) -> None:
            emit("janustls.crl.fetch_failed", "port {port}: {error}; keeping the cached copy", port=port.name,
                 url=url, error=failure.getErrorMessage())  # fmt: skip

        return d.addCallbacks(done, failed)

    from twisted.internet import defer

    return defer.DeferredList([one(url) for url in port.crl_url])
