#!/usr/bin/env python3
"""janustls `srvsock` beside a bare Twisted + pyOpenSSL server, measured in pairs.

Both servers use the same certificates (a root, an intermediate, an EC P-256 server
certificate and one EC client certificate per client process, all made by `janustls.pki`)
and require a client certificate verified against the same root:

  janustls  a `srvsock` port (client_cert = require) whose handler echoes with
            `await sock.read()` + `sock.write()`; connection outcomes logged as in production
  bare      twisted.protocols.tls.TLSMemoryBIOFactory around a pyOpenSSL Context with the
            same TLS settings; its protocol echoes in dataReceived
  bare2     a second copy of `bare`: the control (bare against itself should read 1.00)

Both servers of a pair run at the same time, loaded in the same windows by the same number
of client processes, and each one's CPU is read from its own process clock.  See
benchmarks/README.md for the method and how to read the output.

    python benchmarks/bench_srvsock.py              # the full run (about 6 minutes)
    python benchmarks/bench_srvsock.py --quick      # a smoke run (seconds)
    python benchmarks/bench_srvsock.py --profile    # also: cProfile per handshake, side by side
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Paired, ServerProcess, recv_exactly, tls_connect

ECHO_HANDLER = """\
async def serve(sock):
    while True:
        data = await sock.read()
        if not data:
            return
        sock.write(data)
"""
WORKLOADS = ("handshake", "resumed", "echo")
LABELS = {
    "handshake": "full handshake, TLS 1.3 (us CPU)",
    "resumed": "resumed handshake, TLS 1.3 (us CPU)",
    "echo": "echo round trip, 64 B (us CPU)",
}
ECHO_SIZE = 64


# -- the servers (run as `bench_srvsock.py --serve KIND --dir DIR`) ---------------------------


def _serve_janustls(directory: Path) -> int:
    from janustls.core.config import parse_definitions
    from janustls.ops.service import JanusService

    ini = f"""
[janustls]
procs = {directory / "procs"}

[port:BENCH]
type = srvsock
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / "server" / "server.pem"}
private_key = {directory / "server" / "server.key"}
client_cert = require
addca = {directory / "ca" / "root.pem"}
tls_min = 1.2
tls_max = 1.3
handler = benchecho:serve
"""
    service = JanusService(parse_definitions(ini, source="bench.ini", base=directory))
    service.startService()
    listening = service.listening_port("BENCH")
    assert listening is not None
    return int(listening.getHost().port)


def serve(
    kind: str, directory: Path, log: str, profile_out: Path | None, buffered: bool = False, keep_buffers: bool = False
) -> None:
    common.begin_logging(directory, kind, log)

    def start() -> int:
        from twisted.internet import reactor

        if kind == "janustls":
            return _serve_janustls(directory)
        # The bare servers set MODE_RELEASE_BUFFERS, as janustls, the web benchmark's bare server
        # and Twisted's own CertificateOptions do, unless --bare-keep-buffers; `bare-release` and
        # `bare-keep` are the memory references with and without it.
        release = kind == "bare-release" or (kind in ("bare", "bare2") and not keep_buffers)
        return common.listen_bare(
            reactor, directory, common.bare_echo_factory(), release_buffers=release, buffered=buffered
        )

    common.run_reactor(start, profile_out)


# -- the clients ---------------------------------------------------------------------------------


class SrvsockDriver(common.HandshakeDriver):
    """handshake: connect, 1-byte echo (the server has sent its tickets), close; resumed: the
    same with the newest ticket; echo: 64 bytes back and forth on one connection."""

    def _open(self, port: int, session: Any = None) -> Any:
        s = tls_connect(port, self.ctx, session)
        s.sendall(b"x")
        recv_exactly(s, 1)
        return s

    def prepare_exchange(self, workload: str, port: int) -> list[Any]:
        if workload != "echo":
            raise ValueError(workload)
        return [self._open(port), os.urandom(ECHO_SIZE)]

    def exchange(self, state: list[Any]) -> None:
        s, msg = state[1], state[2]
        s.sendall(msg)
        recv_exactly(s, len(msg))


# -- memory --------------------------------------------------------------------------------------


# -- the profile -------------------------------------------------------------------------------------

#: Per-handshake work janustls does and bare Twisted does not, by the functions that do it.
#: (file suffix, function name): inclusive time is reported; nested entries overlap.
SUSPECTS = (
    ("verify callback (per certificate)", "janustls/tls/policy.py", "verify"),
    ("chain lookup / parse", "janustls/tls/policy.py", "client_chain"),
    ("signed-certificate counting", "janustls/core/trust.py", "count_signed"),
    ("log events (emit)", "janustls/events.py", "emit"),
    ("handler runner: start", "janustls/ports/srvsock.py", "connection_ready"),
    ("handler runner: steps", "janustls/ports/srvsock.py", "_step"),
    ("connection object", "janustls/ports/connection.py", "__init__"),
    ("BIO release", "janustls/tls/_openssl.py", "release_bio_buffers"),
    ("deadline bookkeeping: add", "janustls/ports/base.py", "add"),
    ("deadline bookkeeping: discard", "janustls/ports/base.py", "discard"),
    ("deadline sweep", "janustls/ports/base.py", "_sweep"),
    ("per-address count / limit", "janustls/ports/base.py", "_over_client_limit"),
    ("protocol registration", "janustls/ports/base.py", "registerProtocol"),
    ("protocol unregistration", "janustls/ports/base.py", "unregisterProtocol"),
    ("buildProtocol (janustls)", "janustls/ports/base.py", "buildProtocol"),
    ("TLS connection creation", "janustls/tls/policy.py", "serverConnectionForTLS"),
    ("ClientHello / dataReceived wrapper", "janustls/tls/protocol.py", "dataReceived"),
    ("ticket callback", "janustls/tls/_hidden.py", "on_new_ticket"),
    ("handshakeCompleted (all of it)", "janustls/ports/base.py", "handshakeCompleted"),
    ("connectionLost (all of it)", "janustls/ports/base.py", "connectionLost"),
    ("connectionMade (janustls)", "janustls/ports/base.py", "connectionMade"),
)


# -- the run ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny windows and counts (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="paired windows per workload (default 15; 1 with --quick)")
    ap.add_argument("--window", type=float, default=None, help="seconds per measured window (default 2.0)")
    ap.add_argument("--ramp", type=float, default=None, help="seconds of load before each window (default 0.5)")
    ap.add_argument("--clients", type=int, default=None, help="client processes per server (default 12)")
    ap.add_argument(
        "--sweep",
        default=None,
        help="client counts per server for the full-handshake sweep (default 4,8,12,16; '' for none)",
    )
    ap.add_argument("--sweep-rounds", type=int, default=None, help="paired windows per sweep point (default 5)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument(
        "--connections", type=int, default=None, help="idle connections for the memory figure (default 2000; 0: skip)"
    )
    ap.add_argument(
        "--bare-buffered",
        action="store_true",
        help="bare servers use TLSMemoryBIOFactory's default BufferingTLSTransport (small writes sent on the next "
        "reactor turn) instead of TLSMemoryBIOProtocol, which janustls ports use",
    )
    ap.add_argument(
        "--bare-keep-buffers",
        action="store_true",
        help="bare servers without MODE_RELEASE_BUFFERS (janustls and Twisted's CertificateOptions set it): "
        "OpenSSL keeps its record buffers, which saves it a malloc and free per record",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to separate cores")
    ap.add_argument(
        "--log",
        choices=("discard", "file"),
        default="discard",
        help="discard (default): every log event is emitted and published, the observer drops it; "
        "file: every server writes a text log file, as twistd does",
    )
    ap.add_argument(
        "--profile", action="store_true", help="also profile both servers per full handshake (cProfile), side by side"
    )
    ap.add_argument(
        "--profile-handshakes", type=int, default=None, help="full handshakes per profiled server (default 3000)"
    )
    ap.add_argument(
        "--serve", choices=("janustls", "bare", "bare2", "bare-release", "bare-keep"), help=argparse.SUPPRESS
    )
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:
        serve(args.serve, args.dir, args.log, args.profile_out, args.bare_buffered, args.bare_keep_buffers)
        return 0

    quick = args.quick
    rounds = args.rounds or (1 if quick else 15)
    window = args.window or (0.3 if quick else 2.0)
    ramp = args.ramp if args.ramp is not None else (0.2 if quick else 0.5)
    clients = args.clients or (2 if quick else 12)
    sweep_text = args.sweep if args.sweep is not None else ("1,2" if quick else "4,8,12,16")
    sweep = [int(x) for x in sweep_text.split(",") if x.strip()]
    sweep_rounds = args.sweep_rounds or (1 if quick else 5)
    connections = args.connections if args.connections is not None else (150 if quick else 2000)
    profile_handshakes = args.profile_handshakes or (60 if quick else 3000)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}")

    from janustls.tls.policy import DEFAULT_CIPHERS

    assert DEFAULT_CIPHERS == common.BARE_CIPHERS, "the bare server must use janustls' default ciphers"
    common.raise_nofile()
    started = time.monotonic()
    pin = common.plan_pinning(not args.no_pin)
    script = os.path.abspath(__file__)
    print(
        "janustls srvsock vs bare Twisted + pyOpenSSL: mutual TLS, same PKI (EC P-256, root + intermediate), measured in pairs"
    )
    print(common.machine_line())
    print(pin.note)
    print(
        f"{clients} client processes per server (Python ssl, TLS 1.3); {rounds} paired round(s) of {window:g} s "
        f"after {ramp:g} s of load; ratio: median of the per-round ratios; log events: {args.log}; bare TLS protocol: {'BufferingTLSTransport' if args.bare_buffered else 'TLSMemoryBIOProtocol (as janustls)'}; bare MODE_RELEASE_BUFFERS: {'no' if args.bare_keep_buffers else 'yes (as janustls)'}"
        f"{'  [--quick: smoke run, figures not meaningful]' if quick else ''}"
    )
    sys.stdout.flush()

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: dict[str, tuple[Paired, Paired]] = {}
    sweep_results: list[tuple[int, Paired]] = []
    memory: dict[str, tuple[float, int, int]] = {}
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="janustls-bench-") as tmp:
        directory = Path(tmp)
        server_args = [
            "--dir",
            tmp,
            "--log",
            args.log,
            *(["--bare-buffered"] if args.bare_buffered else []),
            *(["--bare-keep-buffers"] if args.bare_keep_buffers else []),
        ]
        n_clients = 2 * max([clients, *sweep])
        common.make_pki(directory, n_clients)
        (directory / "procs").mkdir()
        (directory / "procs" / "benchecho.py").write_text(ECHO_HANDLER)
        pool = common.ClientPool(SrvsockDriver, directory, n_clients, pin.clients)
        servers: dict[str, ServerProcess] = {}
        try:
            for kind in ("janustls", "bare", "bare2"):
                servers[kind] = common.start_server(
                    script,
                    kind,
                    server_args,
                    pin.servers,
                )
            pair = (servers["janustls"], servers["bare"])
            control = (servers["bare2"], servers["bare"])
            # Warm-up: imports, first handshakes, the allocator's first arenas.
            for w in workloads:
                common.run_pairs(pool, [pair, control], w, min(clients, 2), 1, min(window, 0.3), 0.1)
            for w in workloads:
                p, c = common.run_pairs(pool, [pair, control], w, clients, rounds, window, ramp, progress)
                results[w] = (p, c)
            for count in sweep:
                (p,) = common.run_pairs(pool, [pair], "handshake", count, sweep_rounds, window, ramp, progress)
                sweep_results.append((count, p))
            for s in servers.values():
                s.stop()
            servers.clear()

            if args.profile:
                n_prof = min(clients, 8)
                extra = server_args
                janus = common.profile_server(
                    "janustls", script, extra, directory, pin, pool, n_prof, profile_handshakes
                )
                bare = common.profile_server("bare", script, extra, directory, pin, pool, n_prof, profile_handshakes)
                unprofiled = {}
                if "handshake" in results:
                    p = results["handshake"][0]
                    unprofiled = {"janustls": p.median_us(0), "bare": p.median_us(1)}
                profile_text = common.profile_report(janus, bare, unprofiled, SUSPECTS)

            # Memory: a fresh process per server, one at a time.
            if connections:
                reference = "bare-release" if args.bare_keep_buffers else "bare-keep"
                for kind in ("janustls", "bare", reference):
                    servers[kind] = common.start_server(
                        script,
                        kind,
                        server_args,
                        pin.servers,
                    )
                    memory[kind] = common.measure_memory(servers[kind], pool, connections)
                    servers.pop(kind).stop()
        finally:
            for s in servers.values():
                s.stop()
            pool.close()

    print()
    print("A = janustls srvsock, B = bare Twisted; control rows: A = bare copy, B = bare (should read 1.00)")
    print(
        "us: median server CPU per operation; A/B: median of per-round ratios; busy: server CPU / wall time (1.00 = a core)"
    )
    print(common.RATIO_HEADER)
    print("-" * len(common.RATIO_HEADER))
    for w in workloads:
        p, c = results[w]
        print(common.ratio_line(LABELS[w], p))
        print(common.ratio_line(f"  control: bare/bare, {w}", c))
    if sweep_results:
        print()
        print("full handshake, janustls/bare against client processes per server:")
        for count, p in sweep_results:
            print(common.ratio_line(f"  {count:2d} clients per server ({len(p.windows)} rounds)", p))
    if memory:
        print()
        print(
            f"{'memory per idle connection (KiB RSS)':<40} {memory['janustls'][0]:>10.1f} {memory['bare'][0]:>10.1f} "
            f"{memory['janustls'][0] / memory['bare'][0]:>8.3f}   (janustls, bare, janustls/bare)"
        )
        if "bare-release" in memory:
            print(
                f"{'  reference: bare + MODE_RELEASE_BUFFERS':<40} {'':>10} {memory['bare-release'][0]:>10.1f}"
                f"    (janustls sets this mode; the bare server above does not)"
            )
        else:
            print(
                f"{'  reference: bare without MODE_RELEASE_BUFFERS':<40} {'':>10} {memory['bare-keep'][0]:>10.1f}"
                f"    (the bare server above sets this mode, as janustls does)"
            )
        for kind, (_per, base, loaded) in memory.items():
            print(f"memory {kind}: VmRSS {base} KiB after warm-up -> {loaded} KiB with {connections} connections")
    print()
    for w in workloads:
        p, c = results[w]
        print(f"{w} janustls/bare per round: " + " ".join(f"{r:.3f}" for r in p.ratios))
        print(f"{w} control per round:       " + " ".join(f"{r:.3f}" for r in c.ratios))
    if profile_text:
        print()
        print(profile_text)
    print()
    print("targets: CPU janustls/bare <= 1.05 per workload; janustls <= 35 KiB per idle connection")
    print(f"elapsed: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
