"""TLS learning from mitmproxy's reports, live (docs/bridge.md): a real mitmdump 8.1 with the
addon of dist/mitmproxy reports to a native soth-mitm's bridge.listen while a client that trusts
only the origin's CA rejects mitmproxy's certificate three times for one host. soth-mitm's
stream shows three tls_handshake_failed from provider mitmproxy with host_failure_count 1, 2, 3;
then a CONNECT to that host through soth-mitm's own listener is tunnelled (connect_decision
reason tls_learning, tls_learning_audit applied with signal_provider mitmproxy), exactly as for
native failures (test_learning.py).

mitmdump missing is a failure here, never a skip: ci/setup.sh installs it.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from harness import REPO, Proxy, by_flow
from test_learning import handshake, of_type
from test_tls import TLSOrigin

ADDON = os.path.join(REPO, "dist", "mitmproxy", "soth_bridge.py")
THRESHOLD = 3
TIMEOUT = 20


class Mitmdump:
    """mitmdump on loopback with the addon, reporting to `bridge`."""

    def __init__(self, bridge, origin_ca, tmp):
        if shutil.which("mitmdump") is None:
            raise AssertionError("mitmdump not found: install mitmproxy (ci/setup.sh)")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        policy = os.path.join(tmp, "policy.json")
        with open(policy, "w") as f:
            json.dump({"resolve": {"origin.test": "127.0.0.1"}}, f)
        self.log_path = os.path.join(tmp, "mitmdump.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["mitmdump", "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
             "-s", ADDON, "--set", "soth_bridge=" + bridge, "--set", "soth_policy=" + policy,
             "--set", "confdir=" + os.path.join(tmp, "mitmconf"),
             "--set", "ssl_verify_upstream_trusted_ca=" + origin_ca, "--set", "flow_detail=0"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not self._listens():
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise AssertionError("mitmdump did not start: " + open(self.log_path).read())
            time.sleep(0.1)

    def _listens(self):
        # not by connecting: a probe connection would be a flow of the event stream
        with open("/proc/net/tcp") as f:
            return any(line.split()[1].endswith(":%04X" % self.port) and line.split()[3] == "0A"
                       for line in f.readlines()[1:])

    def addr(self):
        return ("127.0.0.1", self.port)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class BridgeLiveTests(unittest.TestCase):
    def setUp(self):
        self.origin = TLSOrigin()
        self.tmp = tempfile.mkdtemp(prefix="soth-bridge-live-")

    def tearDown(self):
        self.origin.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_mitmproxy_failures_pin_the_host_for_native_workers(self):
        bridge = os.path.join(self.tmp, "bridge.sock")
        cfg = {"bridge": {"listen": bridge}, "policy": {"default": "intercept"},
               "resolve": {"origin.test": "127.0.0.1"},
               "tls": {"upstream_ca_file": self.origin.ca,
                       "learning": {"failure_threshold": THRESHOLD, "window_s": 60}}}
        with Proxy(config=cfg) as p:
            m = Mitmdump(bridge, self.origin.ca, self.tmp)
            try:
                for i in range(THRESHOLD):
                    self.assertIsNone(handshake(m, self.origin),
                                      f"attempt {i}: the client must reject mitmproxy's leaf")
                deadline = time.time() + TIMEOUT
                while True:
                    evs = p.checked_events(settle=0.1, require_closed=False)
                    failed = [e for e in evs if e["type"] == "tls_handshake_failed"]
                    if len(failed) >= THRESHOLD:
                        break
                    self.assertLess(time.time(), deadline, "bridge failures missing\n" +
                                    p.diagnostics() + open(m.log_path).read())
                    time.sleep(0.1)
            finally:
                m.close()
            self.assertEqual(len(failed), THRESHOLD, failed)
            for i, f in enumerate(failed):
                self.assertEqual((f["worker"], f["side"], f["tls_failure_reason"],
                                  f["tls_ops_provider"], f["server_host"],
                                  f["server_port"]),
                                 (-1, "client", "unknown_ca", "mitmproxy", "origin.test",
                                  self.origin.port), f)
                self.assertEqual(f["host_failure_count"], i + 1, f)
                self.assertEqual(f["global_failure_count"], i + 1, f)
            time.sleep(0.3)  # the pin reaches the workers through the telemetry thread
            # soth-mitm's own listener now tunnels the host: the client sees the origin's
            # certificate
            self.assertEqual(handshake(p, self.origin), "origin test CA")
            deadline = time.time() + TIMEOUT
            while True:
                flows = by_flow(p.checked_events(settle=0.1, require_closed=False))
                native = [fl for fl in flows.values() if fl[0]["worker"] >= 0 and
                          fl[-1]["type"] == "stream_closed"]
                if native:
                    break
                self.assertLess(time.time(), deadline, p.diagnostics())
                time.sleep(0.1)
            fl = native[0]
            self.assertEqual([e["type"] for e in fl],
                             ["connect_received", "connect_decision", "tls_learning_audit",
                              "stream_closed"], fl)
            self.assertEqual((fl[1]["decision"], fl[1]["reason"]), ("tunnel", "tls_learning"))
            a = of_type(fl, "tls_learning_audit")[0]
            self.assertEqual((a["decision"], a["host"], a["signal_provider"]),
                             ("applied", "origin.test", "mitmproxy"))
            self.assertIn("failure_threshold_reached", a["reason"])


if __name__ == "__main__":
    unittest.main()
