"""Observability through the real binary: metrics endpoint, jsonl and uds sinks, tail filters."""
import json
import os
import socket
import subprocess
import time
import unittest
import urllib.request

from harness import TAIL_BIN, EchoServer, Proxy, connect_tunnel, free_port, read_all


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v) if "." in v else int(v)  # seconds counters have a fraction
    return out


class ObserveTests(unittest.TestCase):
    def test_metrics_count_connections_and_bytes(self):
        echo = EchoServer()
        mport = free_port()
        with Proxy(workers=2, config={"metrics": {"listen": f"127.0.0.1:{mport}"},
                                      "policy": {"default": "tunnel"}}) as p:
            for _ in range(5):
                s, head = connect_tunnel(p, "127.0.0.1", echo.port)
                s.sendall(b"x" * 1000)
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(len(read_all(s)), 1000)
                s.close()
            time.sleep(0.3)
            m = scrape(mport)
            p.checked_events()
        echo.close()
        for name in ("soth_connections_total", "soth_active_connections",
                     'soth_bytes_total{direction="client_to_server"}',
                     'soth_bytes_total{direction="server_to_client"}',
                     'soth_requests_total{protocol="http1"}',
                     'soth_tls_handshake_failures_total{side="client",reason="unknown_ca"}',
                     "soth_leaf_cache_hits_total", "soth_leaf_cache_misses_total",
                     "soth_events_dropped_total"):
            self.assertIn(name, m)
        self.assertEqual(m["soth_connections_total"], 5)
        self.assertEqual(m["soth_active_connections"], 0)
        self.assertEqual(m['soth_bytes_total{direction="server_to_client"}'], 5000)
        self.assertGreaterEqual(m['soth_bytes_total{direction="client_to_server"}'], 5000)
        self.assertEqual(m["soth_events_dropped_total"], 0)

    def test_jsonl_and_uds_sinks_match_the_ring(self):
        echo = EchoServer()
        with Proxy(config={"policy": {"default": "tunnel"}}) as p0:
            tmp = p0.tmp  # borrow a private directory
        jsonl = os.path.join(tmp + "-sinks", "events.jsonl")
        sock_path = os.path.join(tmp + "-sinks", "events.sock")
        os.makedirs(tmp + "-sinks", exist_ok=True)
        cfg = {"policy": {"default": "tunnel"},
               "events": {"sinks": [{"type": "jsonl", "path": jsonl},
                                    {"type": "uds", "path": sock_path}]}}
        with Proxy(config=cfg) as p:
            u = socket.socket(socket.AF_UNIX)
            u.connect(sock_path)
            u.settimeout(5)
            time.sleep(0.2)
            s, head = connect_tunnel(p, "127.0.0.1", echo.port)
            s.close()
            ring = p.checked_events(settle=0.5)
            got = b""
            while got.count(b"\n") < len(ring):
                got += u.recv(65536)
            u.close()
        echo.close()
        from_uds = [json.loads(line) for line in got.decode().splitlines()]
        with open(jsonl) as f:
            from_file = [json.loads(line) for line in f]
        self.assertEqual(from_uds, ring)
        self.assertEqual(from_file, ring)

    def test_tail_filters_and_follow(self):
        echo = EchoServer()
        with Proxy(config={"policy": {"default": "tunnel"}}) as p:
            follower = subprocess.Popen([TAIL_BIN, "--type", "stream_closed", p.ring],
                                        stdout=subprocess.PIPE)
            time.sleep(0.3)
            for _ in range(3):
                s, head = connect_tunnel(p, "127.0.0.1", echo.port)
                s.close()
            evs = p.checked_events(settle=0.5)
            fid = evs[0]["flow_id"]
            out = subprocess.run([TAIL_BIN, "--from-start", "--once", "--flow", str(fid), p.ring],
                                 capture_output=True, timeout=10)
            lines = [json.loads(x) for x in out.stdout.decode().splitlines()]
            self.assertEqual([e["type"] for e in lines],
                             ["connect_received", "connect_decision", "stream_closed"])
            self.assertTrue(all(e["flow_id"] == fid for e in lines))
            follower.terminate()
            followed = [json.loads(x) for x in follower.communicate(timeout=10)[0].splitlines()]
            self.assertEqual(len(followed), 3)
            self.assertTrue(all(e["type"] == "stream_closed" for e in followed))
            bad = subprocess.run([TAIL_BIN, "--type", "nope", p.ring], capture_output=True)
            self.assertEqual(bad.returncode, 2)
        echo.close()


if __name__ == "__main__":
    unittest.main()
