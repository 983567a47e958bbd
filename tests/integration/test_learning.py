"""TLS learning (pinning bypass) through the real binary: a client that does not trust our CA
fails N times against a TLS origin, then the host is tunnelled (the client sees the origin's own
certificate) until the window ends; non-authoritative signals change nothing; failure events
carry rolling host/global counts. docs/tls.md "Learning"."""
import os
import socket
import ssl
import time
import unittest

from harness import Proxy, by_flow, read_head
from test_tls import TLSOrigin

WINDOW_S = 2
THRESHOLD = 3
# Signals reach the workers through the telemetry thread: one wake-up, normally well under a
# millisecond. Tests leave this much time before relying on a pin (docs/tls.md, staleness).
SETTLE_S = 0.3


def handshake(proxy, origin, cafile=None):
    """CONNECT to origin.test through the proxy, then a TLS handshake that trusts only the
    origin's CA (python's default verification). Returns the peer certificate's issuer CN, or
    None when the handshake failed (our leaf rejected)."""
    s = socket.create_connection(proxy.addr(), timeout=10)
    try:
        s.sendall(f"CONNECT origin.test:{origin.port} HTTP/1.1\r\n\r\n".encode())
        head = read_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=cafile or origin.ca)
        try:
            t = ctx.wrap_socket(s, server_hostname="origin.test")
        except (ssl.SSLError, OSError):
            return None
        cert = t.getpeercert()
        t.close()
        issuer = dict(x[0] for x in cert["issuer"])
        return issuer["commonName"]
    finally:
        s.close()


def flows_in_order(evs):
    """Flows as lists of events, ordered by their first event's gseq."""
    return sorted(by_flow(evs).values(), key=lambda fl: fl[0]["gseq"])


def of_type(fl, t):
    return [e for e in fl if e["type"] == t]


class LearningTests(unittest.TestCase):
    def setUp(self):
        self.origin = TLSOrigin()

    def tearDown(self):
        self.origin.close()

    def config(self, enabled=True):
        return {"policy": {"default": "intercept"}, "resolve": {"origin.test": "127.0.0.1"},
                "tls": {"upstream_ca_file": self.origin.ca,
                        "learning": {"enabled": enabled, "failure_threshold": THRESHOLD,
                                     "window_s": WINDOW_S}}}

    def test_threshold_pins_to_tunnel_then_window_ends(self):
        with Proxy(config=self.config(), workers=2) as p:
            for i in range(THRESHOLD):
                self.assertIsNone(handshake(p, self.origin), f"attempt {i} must fail")
            time.sleep(SETTLE_S)
            # Pinned: tunnelled on whichever worker takes the connection; the client verifies
            # the origin's own certificate.
            for i in range(4):
                self.assertEqual(handshake(p, self.origin), "origin test CA", f"tunnel {i}")
            pinned_at = time.monotonic()
            time.sleep(WINDOW_S + 0.4)
            self.assertGreater(time.monotonic() - pinned_at, WINDOW_S)
            # The pin ran out: intercepted (and rejected by this client) again.
            self.assertIsNone(handshake(p, self.origin))
            evs = p.checked_events()
        flows = flows_in_order(evs)
        self.assertEqual(len(flows), THRESHOLD + 4 + 1)
        # The learning flows: intercepted, one client-side unknown_ca each.
        failures = []
        for fl in flows[:THRESHOLD]:
            dec = of_type(fl, "connect_decision")[0]
            self.assertEqual((dec["decision"], dec["reason"]), ("intercept", "default"))
            failed = of_type(fl, "tls_handshake_failed")
            self.assertEqual(len(failed), 1, fl)
            failures += failed
            self.assertEqual(of_type(fl, "tls_learning_audit"), [])
        # Counts rise 1, 2, 3 in ring order of the failures (with two workers the next flow's
        # connect_received may come before the previous flow's failure).
        for i, f in enumerate(sorted(failures, key=lambda e: e["gseq"])):
            self.assertEqual((f["side"], f["tls_failure_reason"], f["tls_ops_provider"]),
                             ("client", "unknown_ca", "native"))
            self.assertEqual(f["host_failure_count"], i + 1, f)
            self.assertEqual(f["global_failure_count"], i + 1, f)
        # The pinned flows: tunnel by tls_learning, an "applied" audit right after the
        # decision, no TLS events (we never touched the handshake).
        for fl in flows[THRESHOLD:THRESHOLD + 4]:
            types = [e["type"] for e in fl]
            self.assertEqual(types, ["connect_received", "connect_decision",
                                     "tls_learning_audit", "stream_closed"], fl)
            self.assertEqual((fl[1]["decision"], fl[1]["reason"]), ("tunnel", "tls_learning"))
            a = fl[2]
            self.assertEqual((a["decision"], a["host"], a["signal_provider"]),
                             ("applied", "origin.test", "native"))
            self.assertIn("failure_threshold_reached", a["reason"])
        # After the window: intercepted again, and the old failures left the rolling counts.
        last = flows[-1]
        dec = of_type(last, "connect_decision")[0]
        self.assertEqual((dec["decision"], dec["reason"]), ("intercept", "default"))
        f = of_type(last, "tls_handshake_failed")[0]
        self.assertEqual(f["tls_failure_reason"], "unknown_ca")
        self.assertEqual(f["host_failure_count"], 1, f)
        self.assertEqual(f["global_failure_count"], 1, f)

    def test_non_authoritative_provider_is_ignored(self):
        # Test hook: the worker reports its handshake failures as provider hudsucker, through
        # the same flow signal path the mitmproxy bridge uses.
        env = {"SOTH_TEST_TLS_PROVIDER": "hudsucker"}
        with Proxy(config=self.config(), env=env) as p:
            for i in range(THRESHOLD + 1):
                self.assertIsNone(handshake(p, self.origin), f"attempt {i} must fail")
            time.sleep(SETTLE_S)
            self.assertIsNone(handshake(p, self.origin), "still intercepted: nothing learned")
            evs = p.checked_events()
        flows = flows_in_order(evs)
        self.assertEqual(len(flows), THRESHOLD + 2)
        for fl in flows:
            dec = of_type(fl, "connect_decision")[0]
            self.assertEqual((dec["decision"], dec["reason"]), ("intercept", "default"))
            f = of_type(fl, "tls_handshake_failed")[0]
            self.assertEqual(f["tls_ops_provider"], "hudsucker")
            # No state change: the signal was not counted.
            self.assertEqual((f["host_failure_count"], f["global_failure_count"]), (0, 0), f)
            audits = of_type(fl, "tls_learning_audit")
            self.assertEqual(len(audits), 1, fl)
            a = audits[0]
            self.assertEqual((a["decision"], a["host"], a["signal_provider"]),
                             ("ignored", "origin.test", "hudsucker"))
            self.assertGreater(a["seq"], f["seq"])

    def test_injected_signals_through_the_engine_api(self):
        port = self.origin.port
        # Non-authoritative signals through soth_engine_tls_signal: ignored, nothing learned.
        hud = ";".join([f"origin.test {port} client unknown_ca hudsucker"] * (THRESHOLD + 1))
        with Proxy(config=self.config(), env={"SOTH_TEST_TLS_SIGNALS": hud}) as p:
            time.sleep(SETTLE_S)
            self.assertIsNone(handshake(p, self.origin))
            evs = p.checked_events()
            err = p.stderr()
        self.assertIn("ignored a signal for origin.test", err)
        f = [e for e in evs if e["type"] == "tls_handshake_failed"]
        self.assertEqual(len(f), 1)
        self.assertEqual((f[0]["host_failure_count"], f[0]["global_failure_count"]), (1, 1))
        # Authoritative ones (mitmproxy, as the bridge will send): pinned before any flow.
        mitm = ";".join([f"origin.test {port} client cert_validation mitmproxy"] * THRESHOLD)
        with Proxy(config=self.config(), env={"SOTH_TEST_TLS_SIGNALS": mitm}) as p:
            time.sleep(SETTLE_S)
            self.assertEqual(handshake(p, self.origin), "origin test CA")
            evs = p.checked_events()
        self.assertEqual([e["type"] for e in evs],
                         ["connect_received", "connect_decision", "tls_learning_audit",
                          "stream_closed"])
        self.assertEqual(evs[1]["reason"], "tls_learning")
        self.assertEqual((evs[2]["decision"], evs[2]["signal_provider"]), ("applied", "mitmproxy"))

    def test_upstream_failures_count_but_never_pin(self):
        cfg = self.config()
        del cfg["tls"]["upstream_ca_file"]  # the origin's CA is unknown to us: upstream fails
        with Proxy(config=cfg) as p:
            # This client trusts our CA: only the upstream side fails (then a 502 inside TLS).
            ours = os.path.join(p.tmp, "ca", "soth-mitm-ca.pem")
            for _ in range(THRESHOLD + 2):
                self.assertTrue(handshake(p, self.origin, cafile=ours).startswith("soth-mitm CA"))
                time.sleep(0.05)
            evs = p.checked_events()
        failed = [e for e in evs if e["type"] == "tls_handshake_failed"]
        self.assertEqual([e["side"] for e in failed], ["upstream"] * (THRESHOLD + 2))
        self.assertEqual([e["host_failure_count"] for e in failed], list(range(1, THRESHOLD + 3)))
        decisions = [e["reason"] for e in evs if e["type"] == "connect_decision"]
        self.assertEqual(decisions, ["default"] * (THRESHOLD + 2))

    def test_disabled_learning_never_pins(self):
        with Proxy(config=self.config(enabled=False)) as p:
            for _ in range(THRESHOLD + 2):
                self.assertIsNone(handshake(p, self.origin))
            evs = p.checked_events()
        self.assertEqual([e for e in evs if e["type"] == "tls_learning_audit"], [])
        decisions = [e["reason"] for e in evs if e["type"] == "connect_decision"]
        self.assertEqual(decisions, ["default"] * (THRESHOLD + 2))
        # Failure counts are diagnostics (docs/tls.md, "The rule"): kept when learning is off.
        failed = [e for e in evs if e["type"] == "tls_handshake_failed"]
        self.assertEqual([e["host_failure_count"] for e in failed], list(range(1, THRESHOLD + 3)))


if __name__ == "__main__":
    unittest.main()
