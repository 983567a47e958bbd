#!/usr/bin/python3
"""What closing an idle HTTP/2 upstream costs the next request (docs/http2.md, "Idle upstream
connection"): N intercepted HTTP/2 connections through soth-mitm (regular mode, one worker) to
the benchmark's nginx origin on loopback; on each, GET /small, then the same again at once
(warm: the upstream connection is open), then after an idle pause past
timeouts.upstream_idle_ms (cold: the upstream connection was closed and is made again, TCP and
a resumed TLS 1.3 handshake, before the request goes). Prints the median and p90 of each, and
the same with timeouts.upstream_idle_ms 0 (the upstream kept) as the reference.

  /usr/bin/python3 bench/peers/h2_wake.py --build build [--conns 20] [--idle-ms 1000]

Loopback only; every loop is bounded (N connections, one pause)."""
import argparse
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402


class Conn:
    """One HTTP/2 connection through the proxy's CONNECT; get() times one request."""

    def __init__(self, port, origin_port, ca):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(f"CONNECT origin.test:{origin_port} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = raw.recv(1)
            if not b:
                raise RuntimeError("proxy closed during CONNECT")
            head += b
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["h2"])
        self.s = ctx.wrap_socket(raw, server_hostname="origin.test")
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.c.initiate_connection()
        self.s.sendall(self.c.data_to_send())

    def get(self, origin_port):
        t0 = time.perf_counter()
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                  (":authority", f"origin.test:{origin_port}"),
                                  (":path", "/small")], end_stream=True)
        self.s.sendall(self.c.data_to_send())
        body = b""
        deadline = time.time() + 10
        while time.time() < deadline:
            data = self.s.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            for ev in self.c.receive_data(data):
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, sid)
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.s.sendall(self.c.data_to_send())
                    if body != R.SMALL_BODY:
                        raise RuntimeError(f"body {body[:40]!r}")
                    return (time.perf_counter() - t0) * 1e3
                if isinstance(ev, h2.events.StreamReset):
                    raise RuntimeError(f"stream reset {ev.error_code}")
            self.s.sendall(self.c.data_to_send())
        raise RuntimeError("no answer in 10 s")


def run_one(a, d, op, idle_ms):
    with open(f"{d}/p.json", "w") as f:
        json.dump({"tls": {"upstream_ca_file": f"{d}/ca.pem", "learning": {"enabled": False}},
                   "resolve": {"origin.test": "127.0.0.1"},
                   "timeouts": {"idle_ms": 600000, "upstream_idle_ms": idle_ms}}, f)
    port = R.free_port()
    argv = [os.path.join(a.build, "soth-mitm"), "--listen", f"127.0.0.1:{port}", "--workers", "1",
            "--mode", "regular", "--config", f"{d}/p.json", "--ca-dir", f"{d}/soth-ca",
            "--event-ring", f"{d}/p.ring", "--log-level", "warn"]
    p = R.spawn(argv, R.PROXY_CPU, f"{d}/proxy-{idle_ms}.log")
    try:
        if not R.wait_port(port, 30, p):
            sys.exit("soth-mitm did not start")
        ca = f"{d}/soth-ca/soth-mitm-ca.pem"
        conns = [Conn(port, op, ca) for _ in range(a.conns)]
        first = [c.get(op) for c in conns]
        warm = [c.get(op) for c in conns]
        time.sleep((a.idle_ms + 1500) / 1000)
        cold = [c.get(op) for c in conns]
        for c in conns:
            c.s.close()
        return first, warm, cold
    finally:
        R.stop_proc(p)


def stats(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs):6.2f} ms, p90 {xs[int(0.9 * (len(xs) - 1))]:6.2f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--idle-ms", type=int, default=1000,
                    help="timeouts.upstream_idle_ms for the run that closes idle upstreams")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="soth-h2wake-")
    try:
        op = R.small_origin(d)
        for idle_ms in (a.idle_ms, 0):
            first, warm, cold = run_one(a, d, op, idle_ms)
            what = f"upstream_idle_ms {idle_ms}" + (" (kept)" if idle_ms == 0 else "")
            print(f"{what}: {a.conns} connections")
            print(f"  first request      {stats(first)}")
            print(f"  again at once      {stats(warm)}")
            print(f"  after an idle gap  {stats(cold)}")
    finally:
        R.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
