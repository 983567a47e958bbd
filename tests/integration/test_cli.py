"""The soth-mitm command line as docs/cli.md gives it."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from harness import PROXY_BIN, READY_RE


def run(*args, **kw):
    return subprocess.run([PROXY_BIN, *args], capture_output=True, timeout=30, **kw)


class CLITests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="soth-cli-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_version_and_help(self):
        out = run("--version")
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout.decode(), r"^soth-mitm \d+\.\d+\.\d+\n$")
        out = run("--help")
        self.assertEqual(out.returncode, 0)
        for flag in ("--config", "--listen", "--mode", "--workers", "--ca-dir", "--event-ring",
                     "--metrics", "--check-config"):
            self.assertIn(flag, out.stdout.decode())

    def test_bad_command_line_exits_2_with_one_line(self):
        for args in (["--bogus"], ["--workers", "x"], ["extra"], ["--listen"]):
            out = run(*args)
            self.assertEqual(out.returncode, 2, args)
            self.assertEqual(len(out.stderr.decode().strip().splitlines()), 1, out.stderr)

    def test_check_config_valid_prints_effective_json(self):
        path = self.write("ok.json", json.dumps({"listen": "127.0.0.1:9999", "workers": 3}))
        out = run("--check-config", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        cfg = json.loads(out.stdout)
        self.assertEqual(cfg["listen"], "127.0.0.1:9999")
        self.assertEqual(cfg["workers"], 3)
        self.assertEqual(cfg["mode"], "regular")
        self.assertEqual(cfg["tls"]["leaf_cache_size"], 4096)
        self.assertEqual(cfg["timeouts"]["drain_ms"], 5000)

    def test_check_config_flags_override_file(self):
        path = self.write("ok.json", json.dumps({"listen": "127.0.0.1:9999"}))
        out = run("--listen", "127.0.0.1:7777", "--check-config", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["listen"], "127.0.0.1:7777")

    def test_check_config_invalid_exits_2_naming_the_key(self):
        path = self.write("bad.json", json.dumps({"tls": {"leaf_validity_days": -3}}))
        out = run("--check-config", path)
        self.assertEqual(out.returncode, 2)
        line = out.stderr.decode().strip()
        self.assertEqual(len(line.splitlines()), 1)
        self.assertTrue(line.startswith("config: tls.leaf_validity_days: "), line)

    def test_bad_config_at_start_exits_2(self):
        path = self.write("bad.json", '{"listen": "nonsense"}')
        out = run("--config", path)
        self.assertEqual(out.returncode, 2)
        self.assertTrue(out.stderr.decode().startswith("config: listen: "), out.stderr)

    def test_embedded_default_readiness_line(self):
        env = dict(os.environ, XDG_RUNTIME_DIR=os.path.join(self.tmp, "run"),
                   XDG_DATA_HOME=os.path.join(self.tmp, "data"))
        os.makedirs(env["XDG_RUNTIME_DIR"])
        errp = os.path.join(self.tmp, "err.log")
        with open(errp, "w") as err:
            p = subprocess.Popen([PROXY_BIN], stderr=err, env=env)
            try:
                m = None
                for _ in range(200):
                    with open(errp) as f:
                        m = READY_RE.search(f.read())
                    if m or p.poll() is not None:
                        break
                    time.sleep(0.05)
                with open(errp) as f:
                    self.assertIsNotNone(m, f.read())
                self.assertEqual((m.group(1), m.group(2), m.group(3)),
                                 ("127.0.0.1", "8080", "regular"))
                self.assertEqual(int(m.group(4)), os.cpu_count())
                self.assertEqual(m.group(5),
                                 os.path.join(env["XDG_RUNTIME_DIR"], "soth-mitm", "events.ring"))
                p.send_signal(signal.SIGTERM)
                self.assertEqual(p.wait(10), 0)
            finally:
                if p.poll() is None:
                    p.kill()


if __name__ == "__main__":
    unittest.main()
