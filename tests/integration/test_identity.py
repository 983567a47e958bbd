"""Identities and budgets (docs/config.md "identities", docs/soth.md): curl through the real
binary to a plain HTTP origin on loopback; the events and what the origin saw are checked."""
import concurrent.futures
import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.request

from h2_origin import H2Client, H2Origin, body_for
from harness import Proxy, by_flow, free_port


class Origin:
    """Plain HTTP origin on 127.0.0.1 that answers "ok" and records request headers."""

    def __init__(self):
        self.seen = []
        seen = self.seen

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                seen.append(dict(self.headers.items()))
                body = b"ok"
                if self.path.startswith("/size/"):
                    body = b"s" * int(self.path[6:])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def sha(pw):
    return hashlib.sha256(pw.encode()).hexdigest()


USERS = {"users": [{"id": "team-a", "user": "alice", "password_sha256": sha("secret")}]}


def curl(p, urls, *args):
    """Statuses of urls fetched with one curl (one keep-alive connection), via the proxy."""
    cmd = ["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{p.port}", *args]
    for i, u in enumerate(urls):
        if i:
            cmd.append("--next")
            cmd += ["-x", f"http://127.0.0.1:{p.port}", *args]
        cmd += ["-o", "/dev/null", "-w", "%{http_code}\n", u]
    out = subprocess.run(cmd, capture_output=True, timeout=60)
    return out.stdout.decode().split()


def raw(p, head):
    s = socket.create_connection(p.addr(), timeout=10)
    s.sendall(head)
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return data


class IdentityTests(unittest.TestCase):
    def setUp(self):
        self.o = Origin()

    def tearDown(self):
        self.o.close()

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.o.port}{path}"

    def test_basic_credentials_name_the_identity_and_rule(self):
        cfg = {"identities": USERS,
               "policy": {"default": "tunnel", "rules": [
                   {"id": "r1", "host": "127.0.0.1", "action": "intercept",
                    "identities": ["team-a"]}]}}
        with Proxy(config=cfg) as p:
            self.assertEqual(curl(p, [self.url()], "-U", "alice:secret"), ["200"])
            # Without credentials the rule does not apply to the flow: the default (tunnel).
            self.assertEqual(curl(p, [self.url()]), ["200"])
            evs = p.checked_events()
        flows = list(by_flow(evs).values())
        self.assertEqual(len(flows), 2)
        first = flows[0]
        dec = [e for e in first if e["type"] == "connect_decision"][0]
        self.assertEqual((dec["decision"], dec["rule"], dec["route"], dec["identity"]),
                         ("intercept", "r1", "direct", "team-a"))
        after = first[first.index(dec):]
        self.assertTrue(all(e.get("identity") == "team-a" for e in after))
        self.assertTrue(all("identity" not in e for e in first[:first.index(dec)]))
        dec2 = [e for e in flows[1] if e["type"] == "connect_decision"][0]
        self.assertEqual((dec2["decision"], dec2["identity"]), ("tunnel", "anonymous"))
        self.assertNotIn("rule", dec2)
        # The credentials never reach the origin nor any event.
        self.assertTrue(all("Proxy-Authorization" not in h for h in self.o.seen))
        text = str(evs)
        self.assertNotIn("secret", text)
        self.assertNotIn("YWxpY2U6c2VjcmV0", text)  # base64("alice:secret")

    def test_require_answers_407_to_bad_or_missing_credentials(self):
        cfg = {"identities": dict(USERS, require=True),
               "policy": {"default": "intercept"}}
        with Proxy(config=cfg) as p:
            for auth in (b"", b"Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"):  # alice:wrong
                got = raw(p, b"GET " + self.url().encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth +
                          b"\r\n")
                head = got.split(b"\r\n\r\n")[0].split(b"\r\n")
                self.assertEqual(head[0], b"HTTP/1.1 407 Proxy Authentication Required")
                self.assertIn(b'Proxy-Authenticate: Basic realm="soth-mitm"', head)
            self.assertEqual(curl(p, [self.url()], "-U", "alice:secret"), ["200"])
            evs = p.checked_events()
        self.assertEqual(len(self.o.seen), 1)
        self.assertNotIn("d3Jvbmc", str(evs))

    def test_network_identity_from_client_address(self):
        cfg = {"identities": {"networks": [{"id": "v6-lo", "cidrs": ["::1/128"]},
                                           {"id": "v4-lo", "cidrs": ["10.0.0.0/8", "127.0.0.0/8"]}]},
               "policy": {"default": "intercept"}}
        with Proxy(config=cfg) as p:
            self.assertEqual(curl(p, [self.url()]), ["200"])
            evs = p.checked_events()
        dec = [e for e in evs if e["type"] == "connect_decision"][0]
        self.assertEqual(dec["identity"], "v4-lo")
        # The same networks with the proxy on ::1: the client address is ::1.
        with Proxy(config=cfg, extra_args=["--listen", "[::1]:0"]) as p:
            out = subprocess.run(["curl", "-sS", "--max-time", "20", "-x",
                                  f"http://[::1]:{p.port}", "-o", "/dev/null", "-w",
                                  "%{http_code}", self.url()], capture_output=True, timeout=60)
            self.assertEqual(out.stdout, b"200", out.stderr)
            evs = p.checked_events()
        dec = [e for e in evs if e["type"] == "connect_decision"][0]
        self.assertEqual((dec["client_addr"][:5], dec["identity"]), ("[::1]", "v6-lo"))
        # No network holds the client: anonymous.
        cfg["identities"]["networks"] = [{"id": "far", "cidrs": ["192.0.2.0/24"]}]
        with Proxy(config=cfg) as p:
            self.assertEqual(curl(p, [self.url()]), ["200"])
            evs = p.checked_events()
        dec = [e for e in evs if e["type"] == "connect_decision"][0]
        self.assertEqual(dec["identity"], "anonymous")

    def test_budget_of_10_refuses_the_11th_then_serves_after_the_window(self):
        """HTTP/1.1 keep-alive: one connection; the 11th request gets 429 with Retry-After,
        the connection stays open and serves again once the window has passed."""
        cfg = {"policy": {"default": "tunnel", "rules": [
            {"id": "b10", "host": "127.0.0.1", "action": "intercept",
             "budget": {"requests": 10, "window_s": 4}}]}}
        with Proxy(config=cfg) as p:
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            got = []
            t0 = time.monotonic()
            # Credentials nobody configured: anonymous, and never in an event (the 429 too).
            auth = {"Proxy-Authorization": "Basic YWxpY2U6c2VjcmV0"}
            for i in range(11):
                c.request("GET", self.url(f"/{i}"), headers=auth)
                r = c.getresponse()
                got.append((r.status, r.getheader("Retry-After"), r.read()))
                if i == 0:
                    sock = c.sock
                self.assertIs(c.sock, sock, "the connection was not kept")
            self.assertLess(time.monotonic() - t0, 3, "the run must fit in the window")
            self.assertEqual([g[0] for g in got], [200] * 10 + [429])
            self.assertIn(got[10][1], ("1", "2", "3", "4"))
            self.assertEqual(got[10][2], b"soth-mitm: budget exhausted\n")
            # A request with a body over budget: its body is dropped, the next one still parses.
            c.request("POST", self.url("/post"), body=b"x" * 5000)
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (429, b"soth-mitm: budget exhausted\n"))
            # A new connection over budget: the proxy request head itself gets the 429.
            got = raw(p, b"GET " + self.url().encode() + b" HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
            self.assertLess(time.monotonic() - t0, 3.5, "still within the window")
            self.assertTrue(got.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), got)
            self.assertRegex(got.decode(), r"\r\nRetry-After: [1-4]\r\n")
            time.sleep(4.2)
            c.request("GET", self.url("/after"))
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"ok"))
            self.assertIs(c.sock, sock)
            c.close()
            evs = p.checked_events()
        self.assertEqual(len(self.o.seen), 11)
        self.assertNotIn("YWxpY2U6c2VjcmV0", str(evs))
        self.assertEqual([h.get("Proxy-Authorization") for h in self.o.seen], [None] * 11)
        ex = [e for e in evs if e["type"] == "budget_exceeded"]
        self.assertEqual(len(ex), 3)
        self.assertEqual((ex[0]["rule"], ex[0]["limit"], ex[0]["window_s"], ex[0]["identity"],
                          ex[0]["stream_id"]), ("b10", "requests", 4, "anonymous", 11))
        self.assertEqual(ex[2]["stream_id"], 0)
        flow = by_flow(evs)[ex[0]["flow_id"]]
        rh = [e for e in flow if e["type"] == "response_headers" and e["stream_id"] == 11]
        self.assertEqual(rh[0]["status"], 429)

    def test_bytes_budget_lets_the_crossing_request_finish(self):
        cfg = {"policy": {"default": "intercept", "rules": [
            {"id": "by", "host": "127.0.0.1", "action": "intercept",
             "budget": {"bytes": 5000, "window_s": 60}}]}}
        with Proxy(config=cfg) as p:
            got = curl(p, [self.url("/size/4000"), self.url("/size/4000"), self.url("/size/1")])
            self.assertEqual(got, ["200", "200", "429"])
            evs = p.checked_events()
        ex = [e for e in evs if e["type"] == "budget_exceeded"]
        self.assertEqual([(e["rule"], e["limit"]) for e in ex], [("by", "bytes")])

    def test_tunnel_connect_counts_once_and_gets_429(self):
        mport = free_port()
        cfg = {"policy": {"default": "intercept", "rules": [
            {"id": "tun", "host": "127.0.0.1", "action": "tunnel",
             "budget": {"requests": 2, "window_s": 60}}]},
            "metrics": {"listen": f"127.0.0.1:{mport}"}}
        with Proxy(config=cfg) as p:
            # each curl: one CONNECT (counted), two requests inside the tunnel (not seen)
            for _ in range(2):
                self.assertEqual(curl(p, [self.url("/a"), self.url("/b")], "-p"),
                                 ["200", "200"])
            got = raw(p, f"CONNECT 127.0.0.1:{self.o.port} HTTP/1.1\r\nHost: x\r\n\r\n"
                      .encode())
            self.assertTrue(got.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), got)
            self.assertIn(b"\r\nRetry-After: ", got)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            evs = p.checked_events()
        self.assertIn('\nsoth_budget_rejections_total{rule="tun"} 1\n', metrics)
        self.assertEqual(len(self.o.seen), 4)
        ex = [e for e in evs if e["type"] == "budget_exceeded"]
        self.assertEqual([(e["rule"], e["limit"], e["stream_id"]) for e in ex],
                         [("tun", "requests", 0)])

    def test_budget_holds_across_two_workers(self):
        limit = 40
        cfg = {"policy": {"default": "intercept", "rules": [
            {"id": "par", "host": "127.0.0.1", "action": "intercept",
             "budget": {"requests": limit, "window_s": 60}}]}}
        with Proxy(config=cfg, workers=2) as p:
            req = (b"GET " + self.url().encode() + b" HTTP/1.1\r\nHost: x\r\n"
                   b"Connection: close\r\n\r\n")

            def one(_):
                return raw(p, req).split(b"\r\n")[0]

            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                res = list(ex.map(one, range(120)))
            p.checked_events()
        ok = sum(1 for r in res if r.startswith(b"HTTP/1.1 200"))
        refused = sum(1 for r in res if r.startswith(b"HTTP/1.1 429"))
        self.assertEqual(ok + refused, 120)
        # The bound of docs/soth.md ("Design and its bound"): 5% of the limit or 10 requests per
        # extra worker, whichever is larger.
        self.assertGreaterEqual(ok, limit)
        self.assertLessEqual(ok, limit + max(limit // 20, 10 * (p.workers - 1)))
        self.assertEqual(ok, len(self.o.seen))

    def test_reloads_keep_counts_of_an_unchanged_budget_and_free_replaced_tables(self):
        """docs/soth.md "Budgets": a reload that keeps the (identity, budget) layout keeps the
        counts; one that changes it starts a new table, and an open connection admitted
        under the old one carries on. Tables no connection counts in any more are freed: 80
        reloads that each change a large layout (60 identities x 150 budgets) do not pile up
        memory (each table is about 1.7 MiB)."""
        nets = [{"id": f"n{i}", "cidrs": [f"10.{i}.0.0/16"]} for i in range(59)]
        nets.append({"id": "local", "cidrs": ["127.0.0.0/8"]})

        def config(limit):
            rules = [{"id": "b", "host": "127.0.0.1", "action": "intercept",
                      "budget": {"requests": limit, "window_s": 60}}]
            rules += [{"id": f"r{i}", "host": f"h{i}.test", "action": "intercept",
                       "budget": {"requests": 100, "window_s": 60}} for i in range(149)]
            return {"identities": {"networks": nets},
                    "policy": {"default": "tunnel", "rules": rules}}

        def rss_anon(p):
            with open(f"/proc/{p.proc.pid}/status") as f:
                return int(re.search(r"RssAnon:\s+(\d+)", f.read()).group(1))

        # Under ASan a freed table would sit in the quarantine (256 MiB by default) and read as
        # growth: keep the quarantine small so freed memory is reused, as it is in Release.
        asan = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=1"}
        with Proxy(config=config(5), env=asan) as p:
            n_reloads = [0]

            def reload(cfg):
                with open(os.path.join(p.tmp, "config.json"), "w") as f:
                    json.dump(cfg, f)
                n_reloads[0] += 1
                p.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while (p.stderr().count("SIGHUP: reloading") < n_reloads[0] and
                       time.time() < deadline):
                    time.sleep(0.01)
                self.assertEqual(p.stderr().count("SIGHUP: reloading"), n_reloads[0])
                time.sleep(0.05)  # the worker takes the new policy at its next wake-up

            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)

            def get(conn):
                conn.request("GET", self.url("/"))
                r = conn.getresponse()
                r.read()
                return r.status

            self.assertEqual([get(c) for _ in range(3)], [200] * 3)
            reload(config(5))  # the same layout: the 3 stay counted
            self.assertEqual([get(c) for _ in range(3)], [200, 200, 429])
            reload(config(6))  # another limit: a new table, nothing counted yet
            c2 = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            self.assertEqual([get(c2) for _ in range(6)], [200] * 6)
            self.assertEqual(get(c2), 429)
            # c was admitted under the first table and still counts there, after it was
            # replaced: over its limit of 5, as before.
            self.assertEqual(get(c), 429)
            for i in range(10):
                reload(config(7 + i % 2))
            base = rss_anon(p)
            for i in range(80):
                reload(config(7 + i % 2))
            grown = rss_anon(p) - base
            self.assertEqual(get(c), 429)  # the first table is still there for c
            c.close()
            c2.close()
            p.checked_events()
        self.assertLess(grown, 16 * 1024, f"RssAnon grew {grown} KiB over 80 reloads")


class Http2BudgetTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H2Origin()

    @classmethod
    def tearDownClass(cls):
        cls.origin.close()

    def test_budget_429_on_one_stream_connection_carries_on(self):
        """HTTP/2, one connection (python h2 client): the 11th stream gets 429 with
        retry-after and never reaches the origin; after the window the same connection is
        served again."""
        cfg = {"policy": {"default": "tunnel", "rules": [
            {"id": "h2b", "host": "origin.test", "action": "intercept",
             "budget": {"requests": 10, "window_s": 4}}]},
            "resolve": {"origin.test": "127.0.0.1"},
            "tls": {"upstream_ca_file": self.origin.ca}}
        with Proxy(config=cfg) as p:
            ca = f"{p.tmp}/ca/soth-mitm-ca.pem"
            n_before = len([e for e in self.origin.log() if e.get("ev") == "request"])
            c = H2Client(p.addr(), ca, "origin.test", self.origin.port)
            t0 = time.monotonic()
            sids = []
            for i in range(11):  # one after the other: the 11th is the one over budget
                sid = c.request("GET", f"/gen/{i}/100")
                c.run_until(lambda: c.done(sid), timeout=20)
                sids.append(sid)
            self.assertLess(time.monotonic() - t0, 3.5, "the run must fit in the window")
            self.assertEqual([c.r[s]["status"] for s in sids], [200] * 10 + [429])
            self.assertIn(dict(c.r[sids[10]]["headers"]).get(b"retry-after"),
                          (b"1", b"2", b"3", b"4"))
            time.sleep(4.2)
            sid = c.request("GET", "/gen/99/100")
            c.run_until(lambda: c.done(sid), timeout=20)
            self.assertEqual(c.r[sid]["status"], 200)
            self.assertEqual(bytes(c.r[sid]["body"]), body_for(99, 100))
            c.close()
            evs = p.checked_events()
        n_after = len([e for e in self.origin.log() if e.get("ev") == "request"])
        self.assertEqual(n_after - n_before, 11, "the 429 stream never reached the origin")
        ex = [e for e in evs if e["type"] == "budget_exceeded"]
        self.assertEqual(len(ex), 1)
        self.assertEqual((ex[0]["rule"], ex[0]["stream_id"]), ("h2b", sids[10]))
        flows = [fl for fl in by_flow(evs).values()
                 if any(e["type"] == "request_headers" for e in fl)]
        self.assertEqual(len(flows), 1, "one connection")
        rh = [e for e in flows[0] if e["type"] == "response_headers" and
              e["stream_id"] == sids[10]]
        self.assertEqual(rh[0]["status"], 429)
        done = [e for e in flows[0] if e["type"] == "exchange_completed"]
        self.assertEqual(len(done), 12)


if __name__ == "__main__":
    unittest.main()
