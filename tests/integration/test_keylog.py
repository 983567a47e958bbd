"""The TLS key log (docs/tls.md, "Key log"): the proxy writes NSS key log lines for both legs
of an intercepted connection, and Debian's tshark decrypts a loopback capture of each leg with
them: the request's path and a response header appear in the dissection (and do not without
the key log). TLS 1.3 and TLS 1.2; tls.keylog_file and SSLKEYLOGFILE; mode 0600."""
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import unittest

from harness import Proxy
from test_tls import TLSOrigin

TOKEN_RE = re.compile(r"^([A-Z_0-9]+) ([0-9a-f]{64}) ([0-9a-f]+)$")
TLS13_LABELS = {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"}


class MarkedOrigin(TLSOrigin):
    """TLSOrigin whose GET answers carry X-Soth-Keylog-Test (a header to find decrypted)."""

    def __init__(self, max_tls12=False):
        super().__init__(max_tls12=max_tls12)
        handler = self.srv.RequestHandlerClass

        def do_GET(h):
            h.send_response(200)
            h.send_header("X-Soth-Keylog-Test", "marker-" + h.path.rsplit("/", 1)[-1])
            h.send_header("Content-Length", "3")
            h.end_headers()
            h.wfile.write(b"ok\n")

        handler.do_GET = do_GET


class Capture:
    """tcpdump on lo for the given ports, written to a pcap file."""

    def __init__(self, path, ports):
        # A probe listener too: "listening on" can come before packets are captured, so the
        # capture is live once a probe connection shows up in the file.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        probe.listen(64)
        expr = " or ".join(f"tcp port {p}" for p in list(ports) + [probe.getsockname()[1]])
        self.path = path
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0",
                                      "-w", path, expr],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 15
        line = b""
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if b"listening on" in line or not line:
                break
        if b"listening on" not in line:
            self.proc.kill()
            raise RuntimeError("tcpdump did not start: " + line.decode(errors="replace"))
        while time.time() < deadline:
            socket.create_connection(probe.getsockname(), timeout=5).close()
            time.sleep(0.05)
            if os.path.exists(path) and os.path.getsize(path) > 24:  # more than the header
                break
        probe.close()
        if os.path.getsize(path) <= 24:
            self.proc.kill()
            raise RuntimeError("tcpdump captured nothing")

    def stop(self):
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=15)
        self.summary = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()


def dissect(pcap, port, tls_port, keylog):
    """tshark's verbose dissection of the HTTP packets on one TCP port (one leg)."""
    args = ["tshark", "-n", "-r", pcap, "-d", f"tcp.port=={port},{'tls' if tls_port else 'http'}",
            "-o", "tls.desegment_ssl_records:TRUE",
            "-o", "tls.desegment_ssl_application_data:TRUE",
            "-d", f"tls.port=={port},http",
            "-Y", f"tcp.port=={port} && http", "-V"]
    if keylog:
        args[1:1] = ["-o", f"tls.keylog_file:{keylog}"]
    out = subprocess.run(args, capture_output=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError("tshark failed: " + out.stderr.decode(errors="replace"))
    return out.stdout.decode(errors="replace")


def keylog_lines(path):
    with open(path) as f:
        lines = f.read().splitlines()
    for ln in lines:
        assert TOKEN_RE.match(ln), f"not an NSS key log line: {ln!r}"
    return [TOKEN_RE.match(ln).groups() for ln in lines]


class KeylogTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="soth-keylog-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_exchange(self, tls12, keylog_cfg=None, env=None, umask=None):
        origin = MarkedOrigin(max_tls12=tls12)
        try:
            config = {"policy": {"default": "intercept"},
                      "resolve": {"origin.test": "127.0.0.1"},
                      "tls": {"upstream_ca_file": origin.ca}}
            if keylog_cfg:
                config["tls"]["keylog_file"] = keylog_cfg
            old = os.umask(umask) if umask is not None else None
            try:
                p = Proxy(config=config, env=env)
            finally:
                if old is not None:
                    os.umask(old)
            with p:
                pcap = os.path.join(self.tmp, "cap.pcap")
                cap = Capture(pcap, [p.port, origin.port])
                ca = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
                path = "/keylog/" + ("tls12" if tls12 else "tls13") + "-x7q"
                args = ["curl", "-sS", "--http1.1", "--cacert", ca, "-x",
                        f"http://127.0.0.1:{p.port}", f"https://origin.test:{origin.port}{path}"]
                if tls12:
                    args[1:1] = ["--tls-max", "1.2"]
                out = subprocess.run(args, capture_output=True, timeout=30)
                cap.stop()
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, b"ok\n")
                stderr = p.stderr()
            return pcap, path, p.port, origin.port, stderr
        finally:
            origin.close()

    def check_decrypts(self, pcap, path, proxy_port, origin_port, keylog):
        marker = "X-Soth-Keylog-Test: marker-" + path.rsplit("/", 1)[-1]
        # The client leg: CONNECT in the clear, then TLS to the proxy's port.
        client = dissect(pcap, proxy_port, False, keylog)
        self.assertIn(path, client.split("CONNECT", 1)[-1], "client leg: path not decrypted")
        self.assertIn(marker, client, "client leg: response header not decrypted")
        upstream = dissect(pcap, origin_port, True, keylog)
        self.assertIn("GET " + path, upstream, "upstream leg: path not decrypted")
        self.assertIn(marker, upstream, "upstream leg: response header not decrypted")
        # Without the key log the same capture shows neither.
        self.assertNotIn(marker, dissect(pcap, proxy_port, False, None))
        self.assertNotIn(marker, dissect(pcap, origin_port, True, None))

    def test_tls13_both_legs_decrypt_with_config_key(self):
        kl = os.path.join(self.tmp, "keys.log")
        pcap, path, pp, op, stderr = self.run_exchange(False, keylog_cfg=kl, umask=0)
        self.assertIn("TLS key log on (tls.keylog_file)", stderr)
        self.assertEqual(stat.S_IMODE(os.stat(kl).st_mode), 0o600)
        lines = keylog_lines(kl)
        by_random = {}
        for label, cr, secret in lines:
            by_random.setdefault(cr, set()).add(label)
            self.assertIn(len(secret), (64, 96))
        # Two connections (client leg, upstream leg), each with the five TLS 1.3 secrets.
        self.assertEqual(len(by_random), 2, lines)
        for labels in by_random.values():
            self.assertEqual(labels, TLS13_LABELS)
        self.check_decrypts(pcap, path, pp, op, kl)

    def test_tls12_both_legs_decrypt_with_env(self):
        kl = os.path.join(self.tmp, "env-keys.log")
        pcap, path, pp, op, stderr = self.run_exchange(True, env={"SSLKEYLOGFILE": kl})
        self.assertIn("TLS key log on (SSLKEYLOGFILE)", stderr)
        lines = keylog_lines(kl)
        self.assertEqual([l[0] for l in lines], ["CLIENT_RANDOM"] * 2, lines)
        self.assertEqual(len({l[1] for l in lines}), 2)
        self.assertTrue(all(len(l[2]) == 96 for l in lines))
        self.check_decrypts(pcap, path, pp, op, kl)

    def test_config_wins_over_env_and_off_by_default(self):
        kl = os.path.join(self.tmp, "cfg.log")
        env_kl = os.path.join(self.tmp, "env.log")
        _, _, _, _, stderr = self.run_exchange(False, keylog_cfg=kl,
                                               env={"SSLKEYLOGFILE": env_kl})
        self.assertTrue(keylog_lines(kl))
        self.assertFalse(os.path.exists(env_kl))
        # Off: no SSLKEYLOGFILE, no key: no file, no warning.
        env = {"SSLKEYLOGFILE": ""}
        _, _, _, _, stderr = self.run_exchange(False, env=env)
        self.assertNotIn("key log", stderr)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["cap.pcap", "cfg.log"])

    def test_existing_file_is_appended_and_made_0600(self):
        kl = os.path.join(self.tmp, "old.log")
        with open(kl, "w") as f:
            f.write("# earlier\n")
        os.chmod(kl, 0o644)
        self.run_exchange(False, keylog_cfg=kl)
        self.assertEqual(stat.S_IMODE(os.stat(kl).st_mode), 0o600)
        with open(kl) as f:
            text = f.read()
        self.assertTrue(text.startswith("# earlier\n"))
        self.assertEqual(text.count("CLIENT_TRAFFIC_SECRET_0"), 2)

    def test_unwritable_path_refuses_to_start(self):
        with self.assertRaises(RuntimeError) as cm:
            Proxy(config={"tls": {"keylog_file": "/nonexistent-dir/k.log"}})
        self.assertIn("tls.keylog_file: cannot open /nonexistent-dir/k.log", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
