"""The NATS JetStream sink (docs/sinks.md) against a real nats-server on loopback.

soth-mitm runs in reverse mode over plain HTTP in front of nginx; wrk drives small keep-alive
exchanges through it (about four events each). The stream is read back with the nats-read
helper (tests/integration/nats_read.c): every gseq of the run must be there exactly once, as
the message id <run id>-<gseq>, in gseq order per subject.

With "format": "exchange" the sink publishes exchanges (docs/exchanges.md) to <subject>.exchange
with the message id <run id>-x-<flow_id>-<stream_id>: the stream must hold exactly what
`soth-mitm-tail --exchanges` prints from the same run's ring, each once, in the same order.

SOTH_NATS_EVENTS sets how many events the load test produces (default 50,000; the long lane
runs 1,000,000: `SOTH_NATS_EVENTS=1000000 ctest -R integration_nats_sink`).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from harness import BUILD, NGINX, PROXY_BIN, TAIL_BIN, Nginx, free_port, wait_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
NATS_READ = os.path.join(BUILD, "nats-read")
WRK = "/usr/bin/wrk"
EVENTS = int(os.environ.get("SOTH_NATS_EVENTS", "50000"))
READY_RE = re.compile(r"soth-mitm: listening on \S+:(\d+) ")
ID_RE = re.compile(r"^([0-9a-f]{16})-(\d+)$")
XID_RE = re.compile(r"^([0-9a-f]{16})-x-(\d+)-(\d+)(-p)?$")


class NatsServer:
    """nats-server -js on a loopback port with its store in a temp dir (kept across restarts)."""

    def __init__(self, tmp, port=None, jetstream=True, login=None):
        self.port = port or free_port()
        self.login = login  # (user, password) the server requires
        self.store = os.path.join(tmp, "nats-store")
        self.log = os.path.join(tmp, "nats.log")
        self.jetstream = jetstream
        self.proc = None
        self.start()

    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", self.store]
        if self.login:
            args += ["--user", self.login[0], "--pass", self.login[1]]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        assert wait_port(self.port), "nats-server did not start"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Mitm:
    """soth-mitm in reverse mode over plain HTTP, 1 worker, a NATS sink and metrics."""

    def __init__(self, tmp, origin_port, sink, ring_mb=None):
        self.tmp = tmp
        self.metrics_port = free_port()
        cfg = {"policy": {"default": "intercept"},
               "timeouts": {"request_header_ms": 1000, "tls_handshake_ms": 1000},
               "events": {"sinks": [dict({"type": "nats"}, **sink)]},
               "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"}}
        if ring_mb is not None:
            cfg["events"]["ring_size_mb"] = ring_mb
        path = os.path.join(tmp, "mitm.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.err_path = os.path.join(tmp, "mitm.err")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [PROXY_BIN, "--mode", f"reverse:http://127.0.0.1:{origin_port}", "--listen",
             "127.0.0.1:0", "--workers", "1", "--config", path, "--event-ring",
             os.path.join(tmp, "ev.ring"), "--ca-dir", os.path.join(tmp, "ca")],
            stdout=subprocess.DEVNULL, stderr=self.err)
        self.port = None
        deadline = time.time() + 30
        while time.time() < deadline and self.port is None:
            m = READY_RE.search(self.log())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if self.port is None:
            self.proc.kill()
            raise AssertionError("proxy did not start: " + self.log())

    def log(self):
        with open(self.err_path) as f:
            return f.read()

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = int(float(v))
        return out

    def ring(self):
        return os.path.join(self.tmp, "ev.ring")

    def written(self):
        return self.metrics()["soth_events_written_total"]

    def dropped(self):
        return self.metrics()['soth_sink_dropped_total{sink="nats:0"}']

    def pending(self):
        return self.metrics()['soth_sink_pending{sink="nats:0"}']

    def wait_flushed(self, timeout=60):
        """Wait until no more events come (every connection closed: wrk may leave one that never
        sent a byte, which ends at the handshake timeout) and the sink holds nothing: every
        event acknowledged or dropped."""
        deadline = time.time() + timeout
        written = -1
        while time.time() < deadline:
            m = self.metrics()
            now = m["soth_events_written_total"]
            if (now == written and m["soth_active_connections"] == 0 and
                    m['soth_sink_pending{sink="nats:0"}'] == 0):
                return
            written = now
            time.sleep(0.5)
        raise AssertionError(f"sink still holds {self.pending()} events: " + self.log())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        log = self.log()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "WARNING: ThreadSanitizer"):
            assert bad not in log, log[-6000:]
        return self.proc.returncode


# The outage tests' pace: each of wrk's 8 connections waits 2 ms between requests, at most
# 4,000 requests a second. Measured: 66,533 events held over a 5 s outage (about 340 bytes of
# queue each, 23 MB: far under 256 MB, far over 1 MB). Unpaced, a fast machine filled 256 MB
# in that outage and the "within the bound" test dropped events.
PACE_MS = 2


class Load:
    """wrk through the proxy in 1 s rounds until the proxy wrote `events` events or stop().
    With pace_ms, each of wrk's 8 connections waits that long between requests (wrk's `delay`
    hook): at most 8,000 / pace_ms requests a second however fast the machine, for tests whose
    premise is a volume of events (an outage the sink's queue holds)."""

    def __init__(self, mitm, events=None, pace_ms=None):
        self.mitm = mitm
        self.events = events
        self.script = []
        if pace_ms is not None:
            path = os.path.join(mitm.tmp, f"pace{pace_ms}.lua")
            with open(path, "w") as f:
                f.write(f"function delay()\n  return {int(pace_ms)}\nend\n")
            self.script = ["-s", path]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            if self.events is not None and self.mitm.written() >= self.events:
                break
            subprocess.run([WRK, "-t", "1", "-c", "8", "-d", "1s"] + self.script +
                           [f"http://127.0.0.1:{self.mitm.port}/s"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def stop(self):
        self._stop.set()
        self.thread.join()


def read_stream(url, stream, subject, payload=False):
    """[(stream seq, subject, run id, gseq, payload or None)] of the whole stream."""
    out = subprocess.run([NATS_READ, url, stream, subject + ".>"] +
                         (["--payload"] if payload else []),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        parts = line.split(" ", 3)
        m = ID_RE.match(parts[2])
        assert m, f"message id {parts[2]!r} is not <run id>-<gseq>"
        rows.append((int(parts[0]), parts[1], m.group(1), int(m.group(2)),
                     parts[3] if payload else None))
    return rows


def read_exchanges(url, stream, subject):
    """[(subject, run id, message id tail, payload)] of the whole stream, in stream order."""
    out = subprocess.run([NATS_READ, url, stream, subject + ".>", "--payload"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in sorted(out.stdout.splitlines(), key=lambda l: int(l.split(" ", 1)[0])):
        _, subj, mid, body = line.split(" ", 3)
        m = XID_RE.match(mid)
        assert m, f"message id {mid!r} is not <run id>-x-<flow_id>-<stream_id>[-p]"
        rows.append((subj, m.group(1), mid[len(m.group(1)) + 1:], body))
    return rows


class NatsSinkTest(unittest.TestCase):

    def setUp(self):
        for tool in (NATS_SERVER, NGINX, WRK, NATS_READ):
            self.assertTrue(os.path.exists(tool), f"{tool} missing (ci/setup.sh installs it)")
        self.tmp = tempfile.mkdtemp(prefix="soth-nats-")
        self.nats = None
        self.origin = None
        self.mitm = None

    def tearDown(self):
        if self.mitm is not None:
            self.mitm.stop()
            if self._outcome_failed():
                print("---- soth-mitm log\n" + self.mitm.log()[-4000:])
        if self.origin is not None:
            self.origin.close()
        if self.nats is not None:
            self.nats.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _outcome_failed(self):
        res = getattr(self._outcome, "result", None)
        return res is not None and any(t is self for t, _ in res.failures + res.errors)

    def start(self, ring_mb=None, **sink):
        if self.nats is None and "url" not in sink:
            self.nats = NatsServer(self.tmp)
        self.origin = Nginx(self.tmp)
        if "url" not in sink:
            sink["url"] = self.nats.url()
        sink.setdefault("subject", "t.ev")
        sink.setdefault("stream", "TEV")
        self.mitm = Mitm(self.tmp, self.origin.port, sink, ring_mb)
        return self.mitm

    def check_exactly_once(self, rows, last_gseq, dropped=0):
        """Every gseq 1..last_gseq once, minus exactly `dropped`; gseq order per subject."""
        runs = {r[2] for r in rows}
        self.assertEqual(len(runs), 1, f"one run id expected, got {runs}")
        gseqs = [r[3] for r in rows]
        self.assertEqual(len(gseqs), len(set(gseqs)), "a message id is in the stream twice")
        out = [g for g in gseqs if not 1 <= g <= last_gseq]
        self.assertEqual(out, [], f"gseqs outside 1..{last_gseq}")
        missing = last_gseq - len(gseqs)
        self.assertEqual(missing, dropped,
                         f"{missing} gseqs missing from the stream, "
                         f"soth_sink_dropped_total says {dropped}")
        last = {}
        for seq, subject, _, g, _ in sorted(rows):
            self.assertGreater(g, last.get(subject, 0), f"gseq order broken on {subject}")
            last[subject] = g

    def test_load_all_events_exactly_once_in_order(self):
        # Room for the whole load even if the sink thread gets little CPU on a busy machine
        # (wrk, nginx, nats-server and the proxy share it): this test is about delivery.
        m = self.start(max_pending_mb=512)
        load = Load(m, events=EVENTS)
        load.thread.join(timeout=1800)
        load.stop()
        m.wait_flushed(timeout=300)
        last = m.written()
        self.assertGreaterEqual(last, EVENTS)
        self.assertEqual(m.dropped(), 0)
        # The payload is the event as soth-mitm-tail prints it: check it on a bounded load.
        payload = EVENTS <= 100000
        rows = read_stream(self.nats.url(), "TEV", "t.ev", payload=payload)
        self.check_exactly_once(rows, last)
        if payload:
            types = set()
            for _, subject, _, g, body in rows:
                ev = json.loads(body)
                self.assertEqual(ev["gseq"], g)
                self.assertEqual(subject, "t.ev." + ev["type"])
                types.add(ev["type"])
            self.assertLessEqual({"request_headers", "response_headers", "exchange_completed"},
                                 types)
        self.assertEqual(m.stop(), 0)
        print(f"nats sink: {last} events, all in the stream once, in gseq order per subject")

    def outage(self, max_pending_mb, outage_s=5.0):
        """Load, kill nats-server mid-load, restart it after outage_s, load a little more. The
        load is paced (PACE_MS) so that what an outage leaves in the queue does not grow with
        the machine's speed: "within the bound" must stay within it on a fast machine too."""
        m = self.start(max_pending_mb=max_pending_mb)
        load = Load(m, pace_ms=PACE_MS)
        time.sleep(2)
        before = m.written()
        self.nats.kill()
        time.sleep(outage_s)
        during_pending = m.pending()
        self.nats.start()
        time.sleep(2)
        load.stop()
        m.wait_flushed(timeout=120)
        last = m.written()
        dropped = m.dropped()
        rows = read_stream(self.nats.url(), "TEV", "t.ev")
        self.assertGreater(last, before)
        self.check_exactly_once(rows, last, dropped)
        log = m.log()
        lost = re.findall(r"nats: connection to nats://127\.0\.0\.1:\d+ lost", log)
        back = re.findall(r"nats: connected to \S+ after ([\d.]+) s: re-sending (\d+) pending "
                          r"events; (\d+) dropped during the outage", log)
        self.assertEqual(len(lost), 1, log)
        self.assertEqual(len(back), 1, log)
        self.assertGreaterEqual(float(back[0][0]), outage_s - 1)
        # Drops outside the outage (a sink too small to keep up) have their own log line.
        self.assertLessEqual(int(back[0][2]), dropped, log)
        self.assertEqual(m.stop(), 0)
        return during_pending, int(back[0][2]), dropped, last

    def test_outage_within_bound_loses_nothing(self):
        pending, _, dropped, last = self.outage(max_pending_mb=256)
        self.assertGreater(pending, 0, "the sink held nothing during the outage")
        self.assertEqual(dropped, 0)
        print(f"nats outage: {pending} events held, {last} in the stream, none lost")

    def test_outage_past_bound_drops_oldest_counted_exactly(self):
        _, in_outage, dropped, last = self.outage(max_pending_mb=1)
        self.assertGreater(in_outage, 0, "1 MB should not hold a 5 s outage under load")
        print(f"nats outage past the bound: {dropped} dropped of {last}, all others present")

    def test_unreachable_at_start_serves_and_catches_up(self):
        port = free_port()
        m = self.start(url=f"nats://127.0.0.1:{port}")
        self.assertIn("unreachable", m.log())
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://127.0.0.1:{m.port}/s"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.stdout, "200")
        # The exchange's last events reach the sink's queue a little after curl has its
        # answer (telemetry thread, then the sink's metric): wait for them, bounded.
        deadline = time.time() + 10
        while m.pending() == 0 and time.time() < deadline:
            time.sleep(0.05)
        self.assertGreater(m.pending(), 0)
        self.nats = NatsServer(self.tmp, port=port)
        m.wait_flushed(timeout=60)
        rows = read_stream(self.nats.url(), "TEV", "t.ev")
        self.check_exactly_once(rows, m.written())
        self.assertRegex(m.log(), r"nats: connected to \S+ after [\d.]+ s")

    def start_error(self, sink, config_check=False):
        """Run soth-mitm with this sink; it must exit at start-up: (status, stderr)."""
        cfg = os.path.join(self.tmp, "bad.json")
        with open(cfg, "w") as f:
            json.dump({"events": {"sinks": [dict({"type": "nats"}, **sink)]}}, f)
        out = subprocess.run([PROXY_BIN, "--listen", "127.0.0.1:0", "--workers", "1",
                              "--config", cfg, "--event-ring", os.path.join(self.tmp, "x.ring"),
                              "--ca-dir", os.path.join(self.tmp, "ca")],
                             capture_output=True, text=True, timeout=60)
        self.assertNotIn("listening on", out.stderr)
        return out.returncode, out.stderr

    def login_run(self, login_in_url):
        """A server that requires a login; the sink logs in with the `user` and `password` keys
        (its own publishing connection sends them) or with USER:PASSWORD@ in the URL (the
        client library publishes, docs/sinks.md "Cost"). Every event arrives once either way."""
        self.nats = NatsServer(self.tmp, login=("soth", "s3cret"))
        authed = f"nats://soth:s3cret@127.0.0.1:{self.nats.port}"
        if login_in_url:
            m = self.start(url=authed)
        else:
            m = self.start(url=self.nats.url(), user="soth", password="s3cret")
        load = Load(m, events=4000)
        load.thread.join(timeout=600)
        load.stop()
        m.wait_flushed(timeout=120)
        self.assertEqual(m.dropped(), 0)
        self.check_exactly_once(read_stream(authed, "TEV", "t.ev"), m.written())
        self.assertEqual(m.stop(), 0)

    def test_login_keys_own_connection(self):
        self.login_run(login_in_url=False)

    def test_login_in_url_client_library(self):
        self.login_run(login_in_url=True)

    def test_bad_url_is_a_config_error(self):
        rc, err = self.start_error({"url": "http://127.0.0.1:4222"})
        self.assertEqual(rc, 2, err)
        self.assertIn("config: events.sinks[0].url: expected nats://HOST[:PORT]", err)

    def test_stream_conflict_is_a_start_up_error(self):
        # A first run creates stream TEV for subjects other.>; a second run that wants t.ev.*
        # in the same stream must not start.
        self.nats = NatsServer(self.tmp)
        m = self.start(subject="other")
        self.assertEqual(m.stop(), 0)
        self.mitm = None
        self.origin.close()
        self.origin = None
        rc, err = self.start_error({"url": self.nats.url(), "subject": "t.ev", "stream": "TEV"})
        self.assertEqual(rc, 1, err)
        self.assertIn("JetStream stream TEV exists with subjects [other.>], which do not take "
                      "t.ev.", err)
        # The same subjects under another stream name overlap: also refused.
        rc, err = self.start_error({"url": self.nats.url(), "subject": "other",
                                    "stream": "TEV2"})
        self.assertEqual(rc, 1, err)
        self.assertIn("overlap", err)

    def check_exchanges(self, m, url, n_min):
        """The stream holds exactly the exchanges soth-mitm-tail --exchanges prints from the
        ring, byte for byte, each once under its message id, in the same (completion) order."""
        # The ring must still hold the whole run (the tests size it for their load).
        out = subprocess.run([TAIL_BIN, "--from-start", "--once", m.ring()],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.count("\n"), m.written(), "the event ring wrapped")
        out = subprocess.run([TAIL_BIN, "--exchanges", "--from-start", "--once", m.ring()],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        want = out.stdout.splitlines()
        self.assertGreaterEqual(len(want), n_min)
        rows = read_exchanges(url, "TEV", "t.ev")
        self.assertEqual({r[1] for r in rows}, {rows[0][1]}, "one run id expected")
        self.assertEqual({r[0] for r in rows}, {"t.ev.exchange"})
        ids = [r[2] for r in rows]
        self.assertEqual(len(ids), len(set(ids)), "an exchange is in the stream twice")
        for _, _, xid, body in rows:
            x = json.loads(body)
            self.assertEqual(xid, f"x-{x['flow_id']}-{x['stream_id']}")
            self.assertNotIn("partial", x)
        got = [r[3] for r in rows]
        self.assertEqual(len(got), len(want), "exchanges in the stream vs soth-mitm-tail")
        self.assertEqual(got, want)
        return len(got)

    def test_exchanges_are_what_tail_prints_once_each(self):
        m = self.start(format="exchange", max_pending_mb=64, ring_mb=512)
        self.assertIn("publishing exchanges to JetStream stream TEV, subject t.ev.exchange, "
                      "message ids ", m.log())
        load = Load(m, events=8000)
        load.thread.join(timeout=600)
        load.stop()
        m.wait_flushed(timeout=120)
        self.assertEqual(m.dropped(), 0)
        n = self.check_exchanges(m, self.nats.url(), 1500)
        self.assertEqual(m.stop(), 0)
        print(f"nats exchange sink: {n} exchanges, each once, as soth-mitm-tail prints them")

    def test_exchanges_survive_a_server_restart(self):
        # The restart is mid-load: exchanges published before it and re-sent after it are
        # stored once (message ids), none is lost within max_pending_mb.
        # An exchange of this load is about 1 KB of JSON: 256 MB hold the outage.
        m = self.start(format="exchange", max_pending_mb=256, ring_mb=512)
        load = Load(m, pace_ms=PACE_MS)
        time.sleep(2)
        before = m.written()
        self.nats.kill()
        time.sleep(3)
        held = m.pending()
        self.nats.start()
        time.sleep(2)
        load.stop()
        m.wait_flushed(timeout=120)
        self.assertGreater(m.written(), before)
        self.assertGreater(held, 0, "the sink held no exchange during the outage")
        self.assertEqual(m.dropped(), 0)
        back = re.findall(r"nats: connected to \S+ after [\d.]+ s: re-sending (\d+) "
                          r"pending exchanges; 0 dropped during the outage", m.log())
        self.assertEqual(len(back), 1, m.log())
        self.assertGreater(int(back[0]), 0, "nothing was re-sent after the restart")
        n = self.check_exchanges(m, self.nats.url(), 100)
        self.assertEqual(m.stop(), 0)
        print(f"nats exchange sink across a restart: {n} exchanges, each once")

    def test_exchanges_through_the_client_library(self):
        # USER:PASSWORD@ in the URL: libnats publishes, and its acks name the exchange only
        # by message id.
        self.nats = NatsServer(self.tmp, login=("soth", "s3cret"))
        authed = f"nats://soth:s3cret@127.0.0.1:{self.nats.port}"
        m = self.start(url=authed, format="exchange", ring_mb=512)
        load = Load(m, events=4000)
        load.thread.join(timeout=600)
        load.stop()
        m.wait_flushed(timeout=120)
        self.assertEqual(m.dropped(), 0)
        self.check_exchanges(m, authed, 500)
        self.assertEqual(m.stop(), 0)

    def test_server_without_jetstream_is_a_start_up_error(self):
        self.nats = NatsServer(self.tmp, jetstream=False)
        rc, err = self.start_error({"url": self.nats.url()})
        self.assertEqual(rc, 1, err)
        self.assertIn("JetStream is not enabled", err)


if __name__ == "__main__":
    unittest.main()
