"""The bridge against mitmproxy's real reports: every fixture of tests/bridge/fixtures (the
native TLS failure corpus of tests/tls/test_failure.c run through mitmdump with the addon, see
tests/bridge/record_fixtures.py) is fed into a soth-mitm with bridge.listen, and the
tls_failure_reason and side it puts in its event stream are compared with the class the native
path gives the same case (the `expect` of fixtures/index.json, taken from test_failure.c's FIX
table when the fixtures were recorded). Prints the agreement table; every covered case must
agree; the cases mitmproxy cannot produce are listed with why.
"""
import json
import os
import shutil
import socket
import tempfile
import time
import unittest

from harness import REPO, Proxy, by_flow

FIXTURES = os.path.join(REPO, "tests", "bridge", "fixtures")
TIMEOUT = 20


def outcome(flow, side):
    """The flow's verdict on one side: the failure class, "ok", or "none"."""
    for e in flow:
        if e["type"] == "tls_handshake_failed" and e["side"] == side:
            return e["tls_failure_reason"], e
    for e in flow:
        if e["type"] == "tls_handshake_succeeded" and e["side"] == side:
            return "ok", e
    return "none", None


class BridgeReplayTests(unittest.TestCase):
    def test_fixtures_land_in_the_native_classes(self):
        with open(os.path.join(FIXTURES, "index.json")) as f:
            index = json.load(f)
        sock_dir = tempfile.mkdtemp(prefix="soth-replay-")
        self.addCleanup(shutil.rmtree, sock_dir, True)
        path = os.path.join(sock_dir, "bridge.sock")
        rows = []
        with Proxy(config={"bridge": {"listen": path}}) as p:
            seen = set()
            for case in index["cases"]:
                with open(os.path.join(FIXTURES, case["file"]), "rb") as f:
                    data = f.read()
                conns = {json.loads(line)["conn"] for line in data.splitlines() if line}
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                s.sendall(data)
                s.close()
                deadline = time.time() + TIMEOUT
                while True:
                    flows = by_flow(p.checked_events(settle=0.05, require_closed=False))
                    new = {k: v for k, v in flows.items() if k not in seen and
                           v[-1]["type"] == "stream_closed"}
                    if len(new) >= len(conns):
                        break
                    self.assertLess(time.time(), deadline,
                                    f"{case['case']}: {len(new)} of {len(conns)} flows closed\n"
                                    + p.diagnostics())
                    time.sleep(0.1)
                seen.update(new)
                got, ev = "none", None
                for fl in new.values():
                    self.assertTrue(all(e["worker"] == -1 for e in fl), fl)
                    g, e = outcome(fl, case["side"])
                    if g != "none" and (got in ("none", "ok") or g != "ok"):
                        got, ev = g, e
                if ev is not None and ev["type"] == "tls_handshake_failed":
                    self.assertEqual((ev["tls_ops_provider"], ev["tls_failure_source"]),
                                     ("mitmproxy", case["side"]), ev)
                rows.append((case, got, ev["detail"] if ev and "detail" in ev else ""))

        print("\nbridge replay: mitmproxy's reports vs the native classes (test_failure.c)")
        print(f"{'case':40} {'side':9} {'native':16} {'bridge':16}")
        covered = [r for r in rows if r[0]["covered"]]
        agree = 0
        for case, got, detail in rows:
            mark = "  " if got == case["expect"] else ("XX" if case["covered"] else "--")
            agree += case["covered"] and got == case["expect"]
            print(f"{case['case']:40} {case['side']:9} {case['expect']:16} {got:16} {mark} "
                  f"{detail[:70]}")
        print(f"{agree}/{len(covered)} covered cases agree "
              f"({100.0 * agree / max(1, len(covered)):.1f}%)")
        print("not covered (mitmproxy cannot produce them):")
        for case, got, _ in rows:
            if not case["covered"]:
                print(f"  {case['case']}: {case['why']} (bridge: {got})")
        wrong = [(c["case"], c["expect"], g) for c, g, _ in rows if c["covered"] and
                 g != c["expect"]]
        self.assertEqual(wrong, [], "covered cases classified differently from native")
        self.assertGreaterEqual(len(covered), 12)


if __name__ == "__main__":
    unittest.main()
