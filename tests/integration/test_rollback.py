"""The rollback drill (docs/migration.md, "Rollback"): part of the fixture corpus
(tests/corpus) through soth-mitm, then --engine mitmproxy, then soth-mitm again, all three
under one config file with one event ring path, one jsonl event sink and one jsonl exchange
sink. Consumers that stay up across the switches read one continuous, valid stream:

- soth-mitm-tail following the ring (events) and soth-mitm-tail --exchanges following it,
  started once before the first switch, see every run: each start replaces the ring file and
  the followers continue with the new one (docs/event-ring.md);
- the jsonl sinks append every run's lines to the same files.

The stream is cut into runs where gseq starts again at 1 (a new run; flow ids are unique
within a run only, docs/events.md): within a run gseq is 1, 2, 3, ... without a gap, every
line is whole JSON, and the run's events pass the shared checker (eventcheck.py) with every
flow closed. The followers print exactly the sink's lines; every exchange_completed has its
exchange, none partial.

mitmdump missing is a failure here, never a skip: ci/setup.sh installs it.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from harness import PROXY_BIN, READY_RE, TAIL_BIN, check_events

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "differential"))

import fixtures  # noqa: E402 (tests/differential: the corpus' origins and clients)

CORPUS = os.path.join(os.path.dirname(HERE), "corpus")
# One fixture of each kind the switch could tear: HTTP/1.1, HTTP/2, WebSocket, SSE, gRPC,
# plain HTTP with payloads, a TLS failure, a policy block and a tunnel.
DRILL = ["h1_keepalive", "h2_parallel", "ws_echo", "sse_chunked", "grpc_unary",
         "payload_gzip_json", "tls_client_unknown_ca", "policy_block", "policy_tunnel"]
ENGINES = ["soth-mitm", "mitmproxy", "soth-mitm"]
TIMEOUT = 20


class Engine:
    """soth-mitm under the shared config file (no flags but --config and --engine), enough
    of harness.Proxy's surface for the corpus' client scripts: addr(), port, tmp."""

    def __init__(self, engine, cfg_path, tmp):
        self.tmp = tmp
        args = [PROXY_BIN, "--config", cfg_path]
        if engine == "mitmproxy":
            args += ["--engine", "mitmproxy"]
        self.log = open(os.path.join(tmp, f"stderr-{time.time_ns()}.log"), "w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 30
        self.port = None
        while time.time() < deadline and self.port is None:
            m = READY_RE.search(self.stderr())
            if m:
                self.port = int(m.group(2))
            elif self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.port is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{engine} did not start: {self.stderr()}")

    def stderr(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def addr(self):
        return ("127.0.0.1", self.port)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "hung"
        self.log.close()
        return rc


def runs_of(lines, what):
    """Parse JSON lines (every one whole) and cut them into runs at gseq 1."""
    runs = []
    for i, line in enumerate(lines):
        try:
            e = json.loads(line)
        except ValueError as err:
            raise AssertionError(f"{what}: line {i + 1} is not whole JSON ({err}): {line[:200]!r}")
        if e["gseq"] == 1:
            runs.append([])
        if not runs:
            raise AssertionError(f"{what}: the stream does not start at gseq 1: {line[:200]}")
        runs[-1].append(e)
    return runs


class RollbackDrill(unittest.TestCase):
    def setUp(self):
        if shutil.which("mitmdump") is None:
            raise AssertionError("mitmdump not found: install mitmproxy (ci/setup.sh)")
        self.dir = tempfile.mkdtemp(prefix="soth-rollback-")
        self.origins = fixtures.Origins()
        self.followers = []

    def tearDown(self):
        for p, out in self.followers:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
            out.close()
        self.origins.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def follow(self, ring, *flags):
        out = open(os.path.join(self.dir, f"tail{len(self.followers)}.out"), "w+")
        p = subprocess.Popen([TAIL_BIN, "--from-start", *flags, ring], stdout=out,
                             stderr=subprocess.PIPE)
        self.followers.append((p, out))
        return p, out

    def wait_lines(self, path, n, what):
        deadline = time.time() + TIMEOUT
        while True:
            with open(path) as f:
                have = sum(1 for _ in f)
            if have >= n:
                return
            self.assertLess(time.time(), deadline, f"{what}: {have} of {n} lines")
            time.sleep(0.1)

    def test_switch_engines_and_back(self):
        ring = os.path.join(self.dir, "run", "events.ring")
        events_sink = os.path.join(self.dir, "events.jsonl")
        exchange_sink = os.path.join(self.dir, "exchanges.jsonl")
        cfg = fixtures.config(self.origins)
        cfg.update({"listen": "127.0.0.1:0",
                    "events": {"ring_path": ring, "sinks": [
                        {"type": "jsonl", "path": events_sink},
                        {"type": "jsonl", "path": exchange_sink, "format": "exchange"}]}})
        cfg["tls"]["ca_dir"] = os.path.join(self.dir, "ca")
        cfg_path = os.path.join(self.dir, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        corpus = []
        for name in DRILL:
            with open(os.path.join(CORPUS, name + ".json")) as f:
                corpus.append(json.load(f))

        client_results = []
        tails = None
        for i, engine in enumerate(ENGINES):
            e = Engine(engine, cfg_path, self.dir)
            try:
                if tails is None:  # the ring exists now: the followers stay up from here on
                    tails = (self.follow(ring), self.follow(ring, "--exchanges"))
                got = {}
                for fx in corpus:
                    got[fx["name"]] = fixtures.CLIENTS[fx["client"]["kind"]](e, self.origins, fx)
                client_results.append(got)
            finally:
                rc = e.stop()
            err = e.stderr()
            self.assertEqual(rc, 0, f"{engine} (run {i + 1}) exit status: {err}")
            for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                self.assertNotIn(bad, err)
            time.sleep(0.7)  # the followers look for a replaced file every 500 ms
        # what clients saw does not depend on the engine (the parity report compares more)
        for name in ("h1_keepalive", "h2_parallel", "ws_echo", "grpc_unary", "policy_block"):
            self.assertEqual(client_results[0][name], client_results[1][name], name)
            self.assertEqual(client_results[0][name], client_results[2][name], name)

        with open(events_sink) as f:
            sink_lines = f.read().splitlines()
        runs = runs_of(sink_lines, "events sink")
        self.assertEqual(len(runs), 3, "one run per engine start")
        completed = []
        for n, (engine, run) in enumerate(zip(ENGINES, runs)):
            completed.append({(e["flow_id"], e["stream_id"]) for e in run
                              if e["type"] == "exchange_completed"})
            with self.subTest(run=n + 1, engine=engine):
                self.assertEqual([e["gseq"] for e in run], list(range(1, len(run) + 1)),
                                 "gseq 1, 2, 3, ... within a run")
                check_events(run, require_closed=True)
                workers = {e["worker"] for e in run}
                if engine == "mitmproxy":
                    self.assertEqual(workers, {-1})
                else:
                    self.assertTrue(workers and min(workers) >= 0, workers)
                flows = {e["flow_id"] for e in run if e["type"] == "connect_received"}
                self.assertGreaterEqual(len(flows), len(DRILL))
                self.assertGreater(len(completed[-1]), 0)

        # the ring follower printed exactly the sink's lines, across both file switches
        (tp, tout), (xp, xout) = tails
        self.wait_lines(tout.name, len(sink_lines), "soth-mitm-tail")
        with open(exchange_sink) as f:
            exch_lines = f.read().splitlines()
        self.wait_lines(xout.name, len(exch_lines), "soth-mitm-tail --exchanges")
        for p, _ in tails:
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(TIMEOUT), 0, p.stderr.read().decode())
        with open(tout.name) as f:
            self.assertEqual(f.read().splitlines(), sink_lines)
        with open(xout.name) as f:
            self.assertEqual(f.read().splitlines(), exch_lines)

        # exchanges: whole lines, none partial, one per exchange_completed of each run (the
        # runs follow each other: a flow id seen again starts the next run's)
        exch = []
        for i, line in enumerate(exch_lines):
            try:
                exch.append(json.loads(line))
            except ValueError as err:
                raise AssertionError(f"exchange line {i + 1} is not whole JSON ({err})")
        self.assertFalse([x for x in exch if x.get("partial")], "partial exchanges")
        per_run, run, seen = [], set(), set()
        for x in exch:
            if x["stream_id"] == 0:
                continue  # a flow that never reached HTTP (the block, the TLS failure)
            key = (x["flow_id"], x["stream_id"])
            if key in seen or (run and key not in completed[len(per_run)]):
                per_run.append(run)
                run, seen = set(), set()
            run.add(key)
            seen.add(key)
        per_run.append(run)
        self.assertEqual(per_run, completed)
        print(f"\nrollback drill: runs {[len(r) for r in runs]} events, "
              f"{[len(c) for c in completed]} exchanges, {len(exch_lines)} exchange lines",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
