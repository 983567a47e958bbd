"""SOTH bundles through the real binary (docs/bundles.md): a proxy started with --bundle (or
the config key soth.bundle) decides per the bundle, not per the config's own policy; SIGHUP with
a changed bundle changes the decisions for new connections while open ones (a tunnel, a
keep-alive intercepted connection) keep working; a bad bundle on SIGHUP keeps the running
policy and logs the error line once; a bad bundle at start-up exits 2 with that line.

Decisions are told apart by what the client sees: block is a 403 from the proxy; tunnel relays
the client's bytes untouched (an echo origin echoes them, and a TLS client sees the origin's own
certificate); intercept presents a leaf from the proxy's CA and answers from the origin.
"""
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import PROXY_BIN, EchoServer, Proxy, connect_tunnel
from test_http1 import BLOB, Conn, Origin, make_origin_ca, read_response

NAMES = ["origin.test", "echo.bank.test", "ads.test", "other.test", "ignored.test"]

BUNDLE_A = {
    "bundle_version": 1,
    "bundle_id": "it-a",
    "ignore_hosts": ["^ignored\\.test:"],
    "rules": [
        {"id": "banking", "hosts": ["*.bank.test"], "action": "tunnel"},
        {"id": "ads", "hosts": ["ads.test"], "action": "block"},
        {"id": "api", "hosts": ["nothing.test", "origin.test"], "action": "intercept"},
    ],
    "defaults": {"action": "block"},
}

# The same hosts with the decisions turned around.
BUNDLE_B = {
    "bundle_version": 1,
    "bundle_id": "it-b",
    "rules": [
        {"id": "banking", "hosts": ["*.bank.test"], "action": "block"},
        {"id": "api", "hosts": ["origin.test"], "action": "tunnel"},
    ],
    "defaults": {"action": "tunnel"},
}

BAD = {"bundle_version": 1, "rules": [{"id": "x", "hosts": ["a.test"], "acton": "block"}]}
BAD_LINE = "bundle: rules[0].acton: unknown key"


class BundleBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="soth-bundle-")
        make_origin_ca(cls.dir, f"bundle origin test CA {os.getpid()}")
        cls.origin_ca = os.path.join(cls.dir, "ca.pem")
        cls.tls = Origin(tls_dir=cls.dir)
        cls.echo = EchoServer()

    @classmethod
    def tearDownClass(cls):
        cls.tls.close()
        cls.echo.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def write_bundle(self, obj, name="bundle.json"):
        path = os.path.join(self.dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)  # a reload never reads half a file
        return path

    def config(self, **extra):
        # The config's own policy says tunnel everything: the bundle must replace it.
        cfg = {"resolve": {n: "127.0.0.1" for n in NAMES},
               "policy": {"default": "tunnel",
                          "rules": [{"host": "ads.test", "action": "tunnel"}]},
               "tls": {"upstream_ca_file": self.origin_ca}}
        cfg.update(extra)
        return cfg

    def proxy_ca(self, p):
        return os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")

    # -- what the client sees
    def connect_status(self, p, host, port):
        s, head = connect_tunnel(p, host, port)
        return s, head.split(b"\r\n")[0]

    def assert_blocked(self, p, host, port):
        s, line = self.connect_status(p, host, port)
        s.close()
        self.assertEqual(line, b"HTTP/1.1 403 Forbidden", f"{host}:{port}")

    def assert_tunnel_echoes(self, p, host):
        """CONNECT to the echo origin: tunnelled bytes come back untouched. Returns the open
        tunnel."""
        s, line = self.connect_status(p, host, self.echo.port)
        self.assertTrue(line.startswith(b"HTTP/1.1 200"), line)
        s.sendall(b"plain bytes, not TLS")  # interception would fail its handshake on them
        self.assertEqual(recv_n(s, 20), b"plain bytes, not TLS")
        return s

    def tls_through(self, p, host, cafile):
        """CONNECT host:<TLS origin> and a TLS handshake trusting only cafile."""
        s, line = self.connect_status(p, host, self.tls.port)
        self.assertTrue(line.startswith(b"HTTP/1.1 200"), line)
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        return Conn(ctx.wrap_socket(s, server_hostname=host))

    def get(self, c, n):
        c.sendall(f"GET /size/{n} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())
        r = read_response(c)
        self.assertEqual(r["status"], 200)
        self.assertEqual(r["body"], BLOB[:n])

    def assert_intercepted(self, p):
        """The proxy's CA signs what the client sees, and the origin answers. Returns the open
        keep-alive connection."""
        c = self.tls_through(p, "origin.test", self.proxy_ca(p))
        self.get(c, 1000)
        return c

    def assert_tunnelled_tls(self, p):
        """The origin's own certificate reaches the client (the proxy's CA is not trusted)."""
        c = self.tls_through(p, "origin.test", self.origin_ca)
        self.get(c, 1000)
        c.close()

    def wait_for(self, what, cond, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.05)
        self.fail(f"timed out waiting for {what}")


def recv_n(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            break
        out += d
    return out


class BundleDecisionTests(BundleBase):
    def test_decides_per_bundle(self):
        path = self.write_bundle(BUNDLE_A)
        with Proxy(config=self.config(), extra_args=["--bundle", path]) as p:
            tun = self.assert_tunnel_echoes(p, "echo.bank.test")  # rule banking
            tun.close()
            self.assert_blocked(p, "ads.test", 443)  # rule ads (the config said tunnel)
            self.assert_blocked(p, "other.test", self.echo.port)  # defaults.action
            c = self.assert_intercepted(p)  # rule api, its second host
            c.close()
            ign = self.assert_tunnel_echoes(p, "ignored.test")  # ignore_hosts beats the default
            ign.close()
            evs = p.checked_events()
            decided = [(e["server_host"], e["decision"]) for e in evs
                       if e["type"] == "connect_decision"]
            self.assertEqual(decided, [("echo.bank.test", "tunnel"), ("ads.test", "block"),
                                       ("other.test", "block"), ("origin.test", "intercept"),
                                       ("ignored.test", "tunnel")])

    def test_check_config_shows_the_bundle_laid_over(self):
        path = self.write_bundle(BUNDLE_A)
        cfg_path = os.path.join(self.dir, "cfg.json")
        with open(cfg_path, "w") as f:
            json.dump(self.config(), f)
        out = subprocess.run([PROXY_BIN, "--check-config", cfg_path, "--bundle", path],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        eff = json.loads(out.stdout)
        self.assertEqual(eff["soth"], {"bundle": path})
        self.assertEqual(eff["ignore_hosts"], ["^ignored\\.test:"])
        self.assertEqual(eff["policy"]["default"], "block")
        self.assertEqual([(r["host"], r["action"]) for r in eff["policy"]["rules"]],
                         [("*.bank.test", "tunnel"), ("ads.test", "block"),
                          ("nothing.test", "intercept"), ("origin.test", "intercept")])
        self.assertEqual(eff["resolve"]["origin.test"], "127.0.0.1")  # the rest is the file's

    def test_rule_ids_of_several_hosts_fit_the_config(self):
        # A rule with n host patterns compiles to ids "<id>#1".."<id>#n", which the config
        # loader takes only up to 128 bytes: the longest id that fits loads, one byte more is
        # refused by the bundle, not by the loader after it (found by fuzz_bundle).
        def check(rid):
            path = self.write_bundle({"bundle_version": 1, "rules": [
                {"id": rid, "hosts": ["a.test", "b.test"], "action": "block"}]}, "ids.json")
            return subprocess.run([PROXY_BIN, "--listen", "127.0.0.1:0", "--check-bundle", path],
                                  capture_output=True, timeout=30)
        out = check("r" * 126)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([r["id"] for r in json.loads(out.stdout)["policy"]["rules"]],
                         ["r" * 126 + "#1", "r" * 126 + "#2"])
        out = check("r" * 127)
        self.assertEqual(out.returncode, 2)
        self.assertEqual(out.stderr.decode(),
                         'bundle: rules[0].id: with 2 host patterns the compiled rule ids '
                         '("<id>#2") are over 128 bytes: shorten the id\n')
        self.assertEqual(out.stdout, b"")

    def test_bad_bundle_at_startup_exits_2(self):
        path = self.write_bundle(BAD, "bad.json")
        for args in (["--bundle", path], ["--check-bundle", path]):
            out = subprocess.run([PROXY_BIN, "--listen", "127.0.0.1:0", *args],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 2, args)
            self.assertEqual(out.stderr.decode(), BAD_LINE + "\n", args)
            self.assertEqual(out.stdout, b"", args)
        # From the config key as well, and --bundle wins over it.
        cfg_path = os.path.join(self.dir, "cfg-bad.json")
        with open(cfg_path, "w") as f:
            json.dump({"soth": {"bundle": path}}, f)
        out = subprocess.run([PROXY_BIN, "--check-config", cfg_path], capture_output=True,
                             timeout=30)
        self.assertEqual((out.returncode, out.stderr.decode()), (2, BAD_LINE + "\n"))
        good = self.write_bundle(BUNDLE_B)
        out = subprocess.run([PROXY_BIN, "--check-config", cfg_path, "--bundle", good],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["policy"]["default"], "tunnel")
        missing = os.path.join(self.dir, "none.json")
        out = subprocess.run([PROXY_BIN, "--check-bundle", missing], capture_output=True,
                             timeout=30)
        self.assertEqual((out.returncode, out.stderr.decode()),
                         (2, f"bundle: {missing}: cannot open: No such file or directory\n"))


class BundleReloadTests(BundleBase):
    def test_sighup_swaps_bundle_and_keeps_open_connections(self):
        path = self.write_bundle(BUNDLE_A)
        # The bundle named by the config file this time (soth.bundle).
        with Proxy(config=self.config(soth={"bundle": path}), workers=2) as p:
            tun = self.assert_tunnel_echoes(p, "echo.bank.test")
            ka = self.assert_intercepted(p)
            self.assert_blocked(p, "other.test", self.echo.port)

            self.write_bundle(BUNDLE_B)
            p.proc.send_signal(signal.SIGHUP)

            # New connections: decided by bundle B (both workers: a few connections each).
            def b_active():
                s, line = self.connect_status(p, "echo.bank.test", self.echo.port)
                s.close()
                return line.startswith(b"HTTP/1.1 403")
            self.wait_for("bundle B", b_active)
            for _ in range(4):
                self.assert_blocked(p, "echo.bank.test", self.echo.port)
                self.assert_tunnelled_tls(p)  # was intercept
                t = self.assert_tunnel_echoes(p, "other.test")  # the default was block
                t.close()

            # Open connections keep what they were decided with, and keep working.
            tun.sendall(b"still tunnelled")
            self.assertEqual(recv_n(tun, 15), b"still tunnelled")
            self.get(ka, 5000)  # the same intercepted keep-alive connection
            self.get(ka, 10)
            tun.close()
            ka.close()

            # A bad bundle: logged once, bundle B stays.
            self.write_bundle(BAD)
            p.proc.send_signal(signal.SIGHUP)
            self.wait_for("the reload error", lambda: BAD_LINE in p.stderr())
            time.sleep(0.3)
            lines = [ln for ln in p.stderr().splitlines() if BAD_LINE in ln]
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("reload failed, keeping the old policy: " + BAD_LINE, lines[0])
            for _ in range(4):
                self.assert_blocked(p, "echo.bank.test", self.echo.port)
                self.assert_tunnelled_tls(p)
            self.assertIsNone(p.proc.poll())

            # Fixed again: bundle A is back.
            self.write_bundle(BUNDLE_A)
            p.proc.send_signal(signal.SIGHUP)

            def a_active():
                s, line = self.connect_status(p, "echo.bank.test", self.echo.port)
                s.close()
                return line.startswith(b"HTTP/1.1 200")
            self.wait_for("bundle A again", a_active)
            for _ in range(4):
                c = self.assert_intercepted(p)
                c.close()


if __name__ == "__main__":
    unittest.main()
