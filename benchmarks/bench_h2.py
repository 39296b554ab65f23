"""HTTP/2 beside HTTP/1.1 keep-alive on one janustls web port (`http2 = yes`), in one run.

One server process (a webserv port requiring a client certificate, `ON /who = call views:who`);
the client, in this process, runs paired windows in turn on the same port:

- `h1`: HTTP/1.1 keep-alive, `--concurrency` connections, one request in flight on each;
- `h2`: HTTP/2, one connection, `--concurrency` streams in flight;
- `h1 again`: the control (h1 against h1: how far two windows of the same work differ).

Each window: requests per second, and the server's CPU per request (utime + stime of its
process from /proc, over the requests it answered).  Printed: medians with quartiles over the
rounds, and the per-round ratios h2/h1 and the control h1 again/h1.

    python benchmarks/bench_h2.py            # 9 rounds of 2 s windows
    python benchmarks/bench_h2.py --quick    # a smoke run (seconds)

Run under `flock /tmp/janustls-bench.lock` (one benchmark on the machine at a time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # after the path insert

VIEWS = """
def who(request):
    return "hello " + (request.cert_info("CN") or "nobody")
"""


def _serve_janustls(directory: Path, reactor: Any) -> int:
    from janustls.core.config import parse_definitions
    from janustls.ops.build import build_ports

    (directory / "views.py").write_text(VIEWS)
    text = f"""
[janustls]
procs = {directory}
[port:WEB]
type = webserv
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / "server" / "server.pem"}
private_key = {directory / "server" / "server.key"}
client_cert = require
addca = {directory / "ca" / "root.pem"}
http2 = yes
h2_max_streams = 256
[web:WEB]
ON /who = call views:who
"""
    (built,) = build_ports(parse_definitions(text, "bench.ini", directory), reactor)
    port = reactor.listenTCP(0, built.factory, backlog=1024, interface="127.0.0.1")
    return int(port.getHost().port)


def serve(directory: Path, profile_out: Path | None) -> None:
    common.begin_logging(directory, "janustls", "discard")

    def start() -> int:
        from twisted.internet import reactor

        return _serve_janustls(directory, reactor)

    common.run_reactor(start, profile_out)


def profile(server: Any, client: Any, seconds: float, out: Path, label: str, before: dict[Any, Any]) -> None:
    """cProfile the server over one window of `client`; print the top functions by own time.
    The server's profiler accumulates: `before` (updated here) holds the earlier windows' totals."""
    import pstats
    import signal

    server.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        done += client.batch()
    server.proc.send_signal(signal.SIGUSR2)
    server.wait_line("PROFILED")
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    own = {k: v[2] - before.get(k, 0.0) for k, v in stats.items()}
    before.update({k: v[2] for k, v in stats.items()})
    rows = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:25]
    total = sum(own.values())
    print(
        f"\nprofile, {label}: {total / done * 1e6:.1f} us profiled per request ({done} requests); own time per request:"
    )
    for (file, line, func), t in rows:
        where = "/".join(Path(file).parts[-2:])
        print(f"  {t / done * 1e6:8.2f} us  {where}:{line} {func}")


# -- clients ---------------------------------------------------------------------------------------

REQUEST = b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n"


class H1:
    """`n` keep-alive connections; a batch sends one request on each, then reads each answer."""

    def __init__(self, directory: Path, port: int, n: int) -> None:
        ctx = common.client_context(directory, 0)
        ctx.set_alpn_protocols(["http/1.1"])
        self.socks = [common.tls_connect(port, ctx) for _ in range(n)]
        self.bufs = [bytearray() for _ in self.socks]

    def batch(self) -> int:
        for s in self.socks:
            s.sendall(REQUEST)
        for s, buf in zip(self.socks, self.bufs, strict=True):
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = bytes(buf[:head_end]).lower()
                    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    total = head_end + 4 + length
                    if len(buf) >= total:
                        del buf[:total]
                        break
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("the server closed")
                buf += data
        return len(self.socks)

    def close(self) -> None:
        for s in self.socks:
            s.close()


class H2:
    """One HTTP/2 connection; a batch opens `n` streams at once, then reads every answer."""

    def __init__(self, directory: Path, port: int, n: int) -> None:
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings

        self.events = h2.events
        ctx = common.client_context(directory, 0)
        ctx.set_alpn_protocols(["h2"])
        self.sock = common.tls_connect(port, ctx)
        if self.sock.selected_alpn_protocol() != "h2":
            raise RuntimeError("the port did not negotiate h2")
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.sock.sendall(self.conn.data_to_send())
        self.n = n
        self.headers = [
            (b":method", b"GET"),
            (b":path", b"/who"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
        ]

    def batch(self) -> int:
        conn = self.conn
        waiting = set()
        for _ in range(self.n):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, self.headers, end_stream=True)
            waiting.add(sid)
        self.sock.sendall(conn.data_to_send())
        ended, reset = self.events.StreamEnded, self.events.StreamReset
        received = self.events.DataReceived
        while waiting:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the server closed")
            for ev in conn.receive_data(data):
                if isinstance(ev, received):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, ended | reset):
                    waiting.discard(ev.stream_id)
            out = conn.data_to_send()
            if out:
                self.sock.sendall(out)
        return self.n

    def close(self) -> None:
        self.sock.close()


def window(client: Any, pid: int, seconds: float) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request) over one window."""
    cpu0, t0 = common.cpu_seconds(pid), time.perf_counter()
    done = 0
    while time.perf_counter() - t0 < seconds:
        done += client.batch()
    elapsed = time.perf_counter() - t0
    cpu = common.cpu_seconds(pid) - cpu0
    return done / elapsed, cpu / done * 1e6


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny windows (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="paired rounds (default 9; 1 with --quick)")
    ap.add_argument("--window", type=float, default=None, help="seconds per window (default 2; 0.3 with --quick)")
    ap.add_argument("--concurrency", type=int, default=32, help="h2 streams / h1 connections in flight (default 32)")
    ap.add_argument(
        "--profile", action="store_true", help="after the rounds, cProfile the server over one h2 and one h1 window"
    )
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(Path(args.dir), Path(args.profile_out) if args.profile_out else None)
        return 0
    rounds = args.rounds or (1 if args.quick else 9)
    seconds = args.window or (0.3 if args.quick else 2.0)
    n = args.concurrency
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        directory = Path(tmp)
        common.make_pki(directory, 1)
        extra = ["--profile-out", str(directory / "server.prof")] if args.profile else []
        server = common.start_server(__file__, "janustls", ["--dir", str(directory), *extra])
        try:
            h1, h2c = H1(directory, server.port, n), H2(directory, server.port, n)
            for client in (h1, h2c):  # warm-up
                window(client, server.pid, min(seconds, 0.3))
            results: dict[str, list[tuple[float, float]]] = {"h1": [], "h2": [], "h1 again": []}
            for r in range(rounds):
                for name, client in (("h1", h1), ("h2", h2c), ("h1 again", h1)):
                    results[name].append(window(client, server.pid, seconds))
                print(f"  round {r + 1}/{rounds}", file=sys.stderr)
            profiles: list[tuple[Any, str]] = [(h2c, f"HTTP/2, {n} streams"), (h1, f"HTTP/1.1, {n} connections")]
            if args.profile:
                before: dict[Any, Any] = {}
                for client, label in profiles:
                    profile(server, client, seconds, directory / "server.prof", label, before)
            h1.close()
            h2c.close()
        finally:
            server.stop()
    print(f"HTTP/2 vs HTTP/1.1 keep-alive on one janustls port: {n} in flight, {rounds} rounds of {seconds:g}s"
          f"{'  [--quick: smoke run, figures not meaningful]' if args.quick else ''}")  # fmt: skip
    print(
        f"{'workload':<44} {'req/s q1':>10} {'median':>10} {'q3':>10}   {'CPU us/req q1':>13} {'median':>8} {'q3':>8}"
    )
    labels = {"h1": f"HTTP/1.1 keep-alive ({n} connections)", "h2": f"HTTP/2 (1 connection, {n} streams)",
              "h1 again": "HTTP/1.1 keep-alive again (control)"}  # fmt: skip
    for name, rows in results.items():
        rps = quartiles([x[0] for x in rows])
        cpu = quartiles([x[1] for x in rows])
        print(
            f"{labels[name]:<44} {rps[0]:>10.0f} {rps[1]:>10.0f} {rps[2]:>10.0f}   {cpu[0]:>13.1f} {cpu[1]:>8.1f} {cpu[2]:>8.1f}"
        )
    print("ratios per round (median [q1, q3]):")
    for name, other in (("h2", "h1"), ("h1 again", "h1")):
        for i, what in ((0, "req/s"), (1, "CPU/req")):
            ratios = [a[i] / b[i] for a, b in zip(results[name], results[other], strict=True)]
            q1, med, q3 = quartiles(ratios)
            tag = "  control: h1 again / h1," if name == "h1 again" else "  h2 / h1,"
            print(f"{tag} {what}: {med:.3f} [{q1:.3f}, {q3:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
