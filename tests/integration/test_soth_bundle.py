"""The SOTH adapter end to end (docs/bundles.md, docs/soth.md, docs/exchanges.md): one bundle
with two identities (a user, a network) and four kinds of rule (intercept with a budget, tunnel,
intercept through an upstream squid, block) drives a real soth-mitm with 2 workers. Real curl,
python http.client and python h2 clients, TLS origins and squid on loopback; what clients see,
what squid logged, and the exchanges soth-mitm-tail assembles are checked."""
import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from h2_origin import H2Client, H2Origin, body_for
from harness import TAIL_BIN, EchoServer, Proxy, read_head
from test_route import Squid
from test_tls import TLSOrigin

WINDOW_S = 4
ALICE = "Proxy-Authorization: Basic " + base64.b64encode(b"alice:secret").decode() + "\r\n"


def sha(pw):
    return hashlib.sha256(pw.encode()).hexdigest()


def exchanges(p):
    """The exchanges soth-mitm-tail assembles from the proxy's ring (docs/exchanges.md)."""
    out = subprocess.run([TAIL_BIN, "--exchanges", "--from-start", "--once", p.ring],
                         capture_output=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(out.stderr.decode())
    return [json.loads(ln) for ln in out.stdout.decode().splitlines() if ln.strip()]


def tunnel(p, host, port, extra=""):
    s = socket.create_connection(p.addr(), timeout=10)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode())
    return s, read_head(s)


class SothBundleTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.h1 = TLSOrigin()  # origin.test, HTTP/1.1
        cls.h2 = H2Origin()  # origin.test, HTTP/2
        cls.squid = Squid()
        cls.echo = EchoServer()
        cls.dir = tempfile.mkdtemp(prefix="soth-bundle-e2e-")
        cls.cas = os.path.join(cls.dir, "origin-cas.pem")
        with open(cls.cas, "w") as f:
            for ca in (cls.h1.ca, cls.h2.ca):
                with open(ca) as c:
                    f.write(c.read())
        cls.bundle = os.path.join(cls.dir, "bundle.json")
        with open(cls.bundle, "w") as f:
            json.dump({
                "bundle_version": 1, "bundle_id": "e2e-1", "require_identity": True,
                "identities": [
                    {"id": "team-a", "proxy_users": [{"user": "alice",
                                                      "password_sha256": sha("secret")}]},
                    {"id": "build-farm", "cidrs": ["127.0.0.0/8"]}],
                "rules": [
                    {"id": "llm", "hosts": ["origin.test"], "identities": ["team-a"],
                     "action": "intercept",
                     "budget": {"requests": 10, "window_s": WINDOW_S}},
                    {"id": "banking", "hosts": ["bank.test"], "action": "tunnel"},
                    {"id": "egress", "hosts": ["origin.test"], "identities": ["build-farm"],
                     "action": "intercept", "route": cls.squid.route()},
                    {"id": "ads", "hosts": ["ads.test"], "action": "block"}],
                "defaults": {"action": "tunnel", "route": "direct"}}, f)

    @classmethod
    def tearDownClass(cls):
        for o in (cls.h1, cls.h2, cls.squid, cls.echo):
            o.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def proxy(self):
        cfg = {"resolve": {"origin.test": "127.0.0.1", "bank.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.cas}}
        return Proxy(config=cfg, workers=2, extra_args=["--bundle", self.bundle])

    def curl(self, p, url, *args):
        ca = f"{p.tmp}/ca/soth-mitm-ca.pem"
        out = subprocess.run(["curl", "-sS", "--max-time", "20", "--http1.1", "-x",
                              f"http://127.0.0.1:{p.port}", "--cacert", ca, "-o", "-",
                              "-w", "\n%{http_code} %{http_connect}", *args, url],
                             capture_output=True, timeout=60)
        body, _, codes = out.stdout.rpartition(b"\n")
        return body, codes.decode().split()

    def test_user_is_intercepted_and_its_exchanges_carry_identity_and_rule(self):
        with self.proxy() as p:
            body, codes = self.curl(p, f"https://origin.test:{self.h1.port}/x",
                                    "-U", "alice:secret")
            self.assertEqual(codes, ["200", "200"])
            self.assertEqual(body, self.h1.body)  # through the proxy's CA: intercepted
            p.checked_events()
            ex = [x for x in exchanges(p) if x["request"] is not None]
        self.assertEqual(len(ex), 1, ex)
        x = ex[0]
        self.assertEqual((x["identity"], x["rule"], x["route"], x["decision"]),
                         ("team-a", "llm", "direct", "intercept"))
        self.assertEqual((x["request"]["method"], x["request"]["path"], x["response"]["status"]),
                         ("GET", "/x", 200))
        self.assertEqual(x["response"]["body"]["bytes"], len(self.h1.body))
        self.assertNotIn("secret", json.dumps(ex))

    def test_network_identity_goes_through_squid(self):
        with self.proxy() as p:
            # No credentials: the client's address names build-farm, whose rule is egress.
            body, codes = self.curl(p, f"https://origin.test:{self.h1.port}/via-squid")
            self.assertEqual(codes, ["200", "200"])
            self.assertEqual(body, self.h1.body)
            p.checked_events()
            ex = [x for x in exchanges(p) if x["request"] is not None]
        self.assertEqual(len(ex), 1, ex)
        self.assertEqual((ex[0]["identity"], ex[0]["rule"], ex[0]["route"]),
                         ("build-farm", "egress", self.squid.route()))
        log = self.squid.log(f"CONNECT origin.test:{self.h1.port}")
        self.assertIn(f"CONNECT origin.test:{self.h1.port}", log)

    def test_wrong_credentials_get_407(self):
        with self.proxy() as p:
            bad = "Proxy-Authorization: Basic " + base64.b64encode(b"alice:nope").decode()
            s, head = tunnel(p, "origin.test", self.h1.port, bad + "\r\n")
            s.close()
            self.assertTrue(head.startswith(b"HTTP/1.1 407 "), head)
            self.assertIn(b'\r\nProxy-Authenticate: Basic realm="soth-mitm"\r\n', head)
            # curl too, with the wrong password: the CONNECT is answered 407
            _, codes = self.curl(p, f"https://origin.test:{self.h1.port}/", "-U", "alice:nope")
            self.assertEqual(codes[-1], "407")
            evs = p.checked_events()
        self.assertNotIn("nope", json.dumps(evs))

    def test_tunnel_and_block_rules(self):
        with self.proxy() as p:
            s, head = tunnel(p, "bank.test", self.echo.port, ALICE)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.sendall(b"ledger")
            got = b""
            while len(got) < 6:
                d = s.recv(100)
                if not d:
                    break
                got += d
            s.close()
            self.assertEqual(got, b"ledger")
            s, head = tunnel(p, "ads.test", 443, ALICE)
            s.close()
            self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)
            p.checked_events()
            ex = exchanges(p)
        by_host = {x["server_host"]: x for x in ex}
        self.assertEqual((by_host["bank.test"]["decision"], by_host["bank.test"]["rule"]),
                         ("tunnel", "banking"))
        self.assertEqual((by_host["ads.test"]["decision"], by_host["ads.test"]["rule"]),
                         ("block", "ads"))
        self.assertEqual(by_host["ads.test"]["identity"], "team-a")

    def test_budget_http1_keepalive_429_then_serves_after_the_window(self):
        with self.proxy() as p:
            ctx = ssl.create_default_context(cafile=f"{p.tmp}/ca/soth-mitm-ca.pem")
            c = http.client.HTTPSConnection("127.0.0.1", p.port, timeout=10, context=ctx)
            c.set_tunnel("origin.test", self.h1.port,
                         headers={"Proxy-Authorization": ALICE.split(": ", 1)[1].strip()})
            n0 = len(self.h1.reused)
            t0 = time.monotonic()
            got = []
            for i in range(11):
                c.request("GET", f"/{i}")
                r = c.getresponse()
                got.append((r.status, r.getheader("Retry-After"), r.read()))
                if i == 0:
                    sock = c.sock
                self.assertIs(c.sock, sock, "the connection was not kept")
            self.assertLess(time.monotonic() - t0, WINDOW_S - 1, "must fit in the window")
            self.assertEqual([g[0] for g in got], [200] * 10 + [429])
            self.assertIn(got[10][1], [str(i) for i in range(1, WINDOW_S + 1)])
            self.assertEqual(len(self.h1.reused) - n0, 10, "the 429 never reached the origin")
            time.sleep(WINDOW_S + 0.2)
            c.request("GET", "/after")
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (200, self.h1.body))
            self.assertIs(c.sock, sock)
            c.close()
            evs = p.checked_events()
        ex = [e for e in evs if e["type"] == "budget_exceeded"]
        self.assertEqual([(e["rule"], e["identity"], e["limit"]) for e in ex],
                         [("llm", "team-a", "requests")])

    def test_budget_http2_429_on_one_stream_then_serves_after_the_window(self):
        with self.proxy() as p:
            ca = f"{p.tmp}/ca/soth-mitm-ca.pem"
            c = H2Client(p.addr(), ca, "origin.test", self.h2.port, connect_headers=ALICE)
            t0 = time.monotonic()
            sids = []
            for i in range(11):
                sid = c.request("GET", f"/gen/{i}/100")
                c.run_until(lambda: c.done(sid), timeout=20)
                sids.append(sid)
            self.assertLess(time.monotonic() - t0, WINDOW_S - 1, "must fit in the window")
            self.assertEqual([c.r[s]["status"] for s in sids], [200] * 10 + [429])
            for i, s in enumerate(sids[:10]):
                self.assertEqual(bytes(c.r[s]["body"]), body_for(i, 100))
            time.sleep(WINDOW_S + 0.2)
            sid = c.request("GET", "/gen/99/100")
            c.run_until(lambda: c.done(sid), timeout=20)
            self.assertEqual((c.r[sid]["status"], bytes(c.r[sid]["body"])),
                             (200, body_for(99, 100)))
            c.close()
            p.checked_events()
            ex = [x for x in exchanges(p) if x["request"] is not None]
        self.assertEqual(len(ex), 12)
        self.assertEqual(sorted(x["response"]["status"] for x in ex), [200] * 11 + [429])
        self.assertTrue(all((x["identity"], x["rule"]) == ("team-a", "llm") for x in ex))


if __name__ == "__main__":
    unittest.main()
