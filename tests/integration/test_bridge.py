"""The bridge (docs/bridge.md) through the real binary: tls_op reports feed TLS learning like
native failures (mitmproxy pins, hudsucker is audited and ignored), event lines become flows of
worker -1 that pass the ordering checks, hostile clients change nothing, the socket is 0600."""
import json
import os
import socket
import stat
import tempfile
import time
import unittest

from harness import PROXY_BIN, EchoServer, Proxy, by_flow, connect_tunnel, free_port, read_all
from test_learning import SETTLE_S, THRESHOLD, flows_in_order, handshake, of_type
from test_observe import scrape
from test_tls import TLSOrigin


with open(PROXY_BIN, "rb") as _f:
    ASAN = b"__asan_init" in _f.read()


def send_lines(path, lines):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    s.close()


def failing_conn(conn, provider, port):
    common = {"kind": "tls_op", "provider": provider, "conn": conn,
              "client_addr": "127.0.0.1:40000", "server_host": "origin.test",
              "server_port": port, "sni": "origin.test"}
    return [dict(common, hook="tls_clienthello"), dict(common, hook="tls_start_client"),
            dict(common, hook="tls_failed_client",
                 error="The client does not trust the proxy's certificate for origin.test "
                       "(tlsv1 alert unknown ca)"),
            dict(common, hook="client_disconnected")]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class BridgeTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="soth-bridge-")
        self.sock = os.path.join(self.dir, "bridge.sock")

    def config(self, **extra):
        cfg = {"bridge": {"listen": self.sock}}
        cfg.update(extra)
        return cfg

    def learning_run(self, provider):
        origin = TLSOrigin()
        mport = free_port()
        try:
            cfg = self.config(policy={"default": "intercept"},
                              metrics={"listen": f"127.0.0.1:{mport}"},
                              resolve={"origin.test": "127.0.0.1"},
                              tls={"upstream_ca_file": origin.ca,
                                   "learning": {"failure_threshold": THRESHOLD,
                                                "window_s": 60}})
            with Proxy(config=cfg) as p:
                for i in range(THRESHOLD):
                    send_lines(self.sock, failing_conn(f"{provider}-{i}", provider, origin.port))
                time.sleep(SETTLE_S)
                # bridged failures count like the workers' own
                m = scrape(mport)
                self.assertEqual(
                    m['soth_tls_handshake_failures_total{side="client",reason="unknown_ca"}'],
                    THRESHOLD)
                issuer = handshake(p, origin)
                evs = p.checked_events()
        finally:
            origin.close()
        bridged = [fl for fl in flows_in_order(evs) if fl[0]["worker"] == -1]
        native = [fl for fl in flows_in_order(evs) if fl[0]["worker"] != -1]
        self.assertEqual(len(bridged), THRESHOLD)
        self.assertEqual(len(native), 1)
        return issuer, bridged, native[0]

    def test_mitmproxy_failures_pin_the_host_for_the_native_engine(self):
        issuer, bridged, fl = self.learning_run("mitmproxy")
        for i, b in enumerate(bridged):
            self.assertEqual([e["type"] for e in b],
                             ["connect_received", "connect_decision", "tls_handshake_started",
                              "tls_handshake_failed", "stream_closed"])
            f = of_type(b, "tls_handshake_failed")[0]
            self.assertEqual((f["side"], f["tls_failure_reason"], f["tls_ops_provider"],
                              f["tls_failure_source"]),
                             ("client", "unknown_ca", "mitmproxy", "client"))
            self.assertEqual(f["host_failure_count"], i + 1)
            self.assertEqual(f["client_addr"], "127.0.0.1:40000")
            self.assertEqual(b[-1]["reason_code"], "client_eof")
        # the native engine's next CONNECT is tunnelled: the client sees the origin's own CA
        self.assertEqual(issuer, "origin test CA")
        self.assertEqual([e["type"] for e in fl],
                         ["connect_received", "connect_decision", "tls_learning_audit",
                          "stream_closed"])
        self.assertEqual((fl[1]["decision"], fl[1]["reason"]), ("tunnel", "tls_learning"))
        self.assertEqual((fl[2]["decision"], fl[2]["signal_provider"]), ("applied", "mitmproxy"))

    def test_hudsucker_failures_are_audited_and_never_pin(self):
        issuer, bridged, fl = self.learning_run("hudsucker")
        for b in bridged:
            self.assertEqual([e["type"] for e in b],
                             ["connect_received", "connect_decision", "tls_handshake_started",
                              "tls_handshake_failed", "tls_learning_audit", "stream_closed"])
            a = of_type(b, "tls_learning_audit")[0]
            self.assertEqual((a["decision"], a["reason"], a["signal_provider"]),
                             ("ignored", "provider_not_authoritative", "hudsucker"))
        self.assertIsNone(issuer)  # intercepted: this client rejects our leaf
        dec = of_type(fl, "connect_decision")[0]
        self.assertEqual((dec["decision"], dec["reason"]), ("intercept", "default"))

    def test_event_lines_become_a_checked_flow_and_disorder_is_refused(self):
        mport = free_port()
        conn = {"kind": "event", "conn": 42}
        lines = [
            dict(conn, type="connect_received", method="CONNECT", target="a.test:443",
                 client_addr="127.0.0.1:41000", server_host="a.test", server_port=443),
            dict(conn, type="connect_decision", decision="intercept", reason="default"),
            dict(conn, type="request_headers", stream_id=1, method="GET", scheme="https",
                 authority="a.test", path="/", http_version="1.1",
                 headers=[["host", "a.test"], ["x-raw", {"b64": "/w=="}]], protocol="http1"),
            dict(conn, type="response_headers", stream_id=1, status=200, http_version="1.1",
                 headers=[["content-length", "2"]]),
            dict(conn, type="response_body_chunk", stream_id=1, offset=0, len=2,
                 data_b64="b2s=", truncated=False),
            dict(conn, type="exchange_completed", stream_id=1, outcome="complete",
                 request_bytes=0, response_bytes=2),
            # out of order: a response head after the exchange ended
            dict(conn, type="response_headers", stream_id=1, status=200, http_version="1.1",
                 headers=[]),
            dict(conn, type="stream_closed", reason_code="client_eof"),
        ]
        with Proxy(config=self.config(metrics={"listen": f"127.0.0.1:{mport}"})) as p:
            send_lines(self.sock, lines)
            time.sleep(0.3)
            m = scrape(mport)
            evs = p.checked_events()
        self.assertEqual(m['soth_bridge_refused_total{reason="order"}'], 1)
        self.assertEqual(m["soth_bridge_lines_total"], len(lines))
        self.assertEqual(m["soth_bridge_flows"], 0)
        flows = [fl for fl in by_flow(evs).values() if fl[0]["worker"] == -1]
        self.assertEqual(len(flows), 1)
        self.assertEqual([e["type"] for e in flows[0]],
                         ["connect_received", "connect_decision", "request_headers",
                          "response_headers", "response_body_chunk", "exchange_completed",
                          "stream_closed"])
        self.assertTrue(all(e["flow_id"] >> 48 == 0x7fff for e in flows[0]))
        self.assertEqual(flows[0][2]["headers"][1], ["x-raw", {"b64": "/w=="}])
        self.assertEqual(flows[0][2]["protocol"], "http1")

    def test_socket_is_0600_and_a_stale_one_is_replaced(self):
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.sock)
        stale.close()  # leaves the file behind, as a crashed run would
        with Proxy(config=self.config()):
            mode = stat.S_IMODE(os.stat(self.sock).st_mode)
            self.assertEqual(mode, 0o600, oct(mode))
            send_lines(self.sock, failing_conn("x", "mitmproxy", 443)[:1])
        self.assertFalse(os.path.exists(self.sock), "the socket is removed at stop")

    def test_hostile_clients_leave_the_proxy_serving(self):
        echo = EchoServer()
        mport = free_port()
        cfg = self.config(metrics={"listen": f"127.0.0.1:{mport}"}, timeouts={"idle_ms": 1500})
        with Proxy(config=cfg) as p:
            rss0 = rss_kib(p.proc.pid)
            silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            silent.connect(self.sock)
            # garbage, then a line that is no object: each closes its client
            for payload in (b"\x00\xff garbage\n", b"[1,2,3]\n"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock)
                s.sendall(payload)
                s.settimeout(5)
                self.assertEqual(s.recv(1), b"", "the bridge closes the client")
                s.close()
            # a 2 MiB line
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.sock)
            s.settimeout(10)
            try:
                s.sendall(b'{"kind":"tls_op","x":"' + b"a" * (2 << 20) + b'"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                self.assertEqual(s.recv(1), b"")
            except ConnectionResetError:
                pass
            s.close()
            # 10,000 connects in batches of 100: over 64 at once are accepted and closed
            for _ in range(100):
                batch = []
                for _ in range(100):
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(self.sock)
                    batch.append(c)
                for c in batch:
                    c.close()
            # the bridge sees every close (then one client is left: the silent one)
            deadline = time.monotonic() + 10
            while scrape(mport)["soth_bridge_clients"] > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            # many conns that never end, over the bridge: bounded by the conn table
            big = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            big.connect(self.sock)
            big.sendall(b"".join(json.dumps(
                {"kind": "tls_op", "provider": "mitmproxy", "hook": "tls_clienthello",
                 "conn": i, "server_host": "h.test", "server_port": 443}).encode() + b"\n"
                for i in range(20000)))
            big.close()
            # the silent client is closed after timeouts.idle_ms
            silent.settimeout(10)
            t0 = time.monotonic()
            self.assertEqual(silent.recv(1), b"")
            self.assertLess(time.monotonic() - t0, 8)
            silent.close()
            # the proxy still serves
            c, head = connect_tunnel(p, "127.0.0.1", echo.port)
            c.sendall(b"ping")
            c.shutdown(socket.SHUT_WR)
            self.assertEqual(read_all(c), b"ping")
            c.close()
            rss1 = rss_kib(p.proc.pid)
            # every client gone, and the 20,000 idle conns end with idle_timeout
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                m = scrape(mport)
                if m["soth_bridge_flows"] == 0 and m["soth_bridge_clients"] == 0:
                    break
                time.sleep(0.2)
            evs = p.checked_events(settle=0.5)
        echo.close()
        self.assertEqual(m['soth_bridge_refused_total{reason="bad_json"}'], 1)
        self.assertEqual(m['soth_bridge_refused_total{reason="not_object"}'], 1)
        self.assertEqual(m['soth_bridge_refused_total{reason="line_too_long"}'], 1)
        self.assertGreater(m['soth_bridge_refused_total{reason="too_many_clients"}'], 0)
        self.assertEqual((m["soth_bridge_clients"], m["soth_bridge_flows"]), (0, 0))
        # bounded: 20,000 flows and the buffers of a 2 MiB line cost well under 64 MiB (about
        # 14 MiB in a Release build; an ASan build keeps freed memory in its quarantine)
        bound = 320 if ASAN else 64
        self.assertLess(rss1 - rss0, bound * 1024, f"RSS {rss0} -> {rss1} KiB")
        idle = [fl for fl in by_flow(evs).values() if fl[0]["worker"] == -1]
        self.assertEqual(len(idle), 20000)
        self.assertTrue(all(fl[-1]["reason_code"] == "idle_timeout" for fl in idle))


if __name__ == "__main__":
    unittest.main()
