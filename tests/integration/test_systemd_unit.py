"""The systemd unit the build configures (dist/soth-mitm.service.in; docs/operating.md,
"Service"): `systemd-analyze verify` accepts it alone and with the transparent-mode drop-in,
without a single warning, and it carries the settings the docs promise."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import BUILD, PROXY_BIN, REPO


class SystemdUnitTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="soth-unit-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        with open(os.path.join(BUILD, "dist", "soth-mitm.service")) as f:
            self.unit = f.read()
        # verify checks that ExecStart's program exists and that the Documentation= pages
        # open with man(1): point ExecStart at the built binary (the only line changed) and
        # MANPATH at the repository's pages.
        self.units = os.path.join(self.tmp, "units")
        os.makedirs(os.path.join(self.units, "soth-mitm.service.d"))
        self.path = os.path.join(self.units, "soth-mitm.service")
        self.assertRegex(self.unit, r"(?m)^ExecStart=/\S+/soth-mitm --config /\S+/config\.json$")
        with open(self.path, "w") as f:
            f.write(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=" + PROXY_BIN, self.unit))
        man = os.path.join(self.tmp, "man")
        for sec in ("1", "5"):
            os.makedirs(os.path.join(man, "man" + sec))
        for page in os.listdir(os.path.join(REPO, "man")):
            os.symlink(os.path.join(REPO, "man", page),
                       os.path.join(man, "man" + page[-1], page))
        self.env = dict(os.environ, MANPATH=man)

    def verify(self):
        out = subprocess.run(["systemd-analyze", "verify", self.path], capture_output=True,
                             timeout=120, env=self.env)
        return out.returncode, (out.stdout + out.stderr).decode()

    def directives(self, text):
        d = {}
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                d.setdefault(k, []).append(v)
        return d

    def test_verify_clean(self):
        self.assertEqual(self.verify(), (0, ""))

    def test_verify_reports_a_bad_directive(self):
        # The check above would see a broken unit: systemd-analyze warns (and still exits 0)
        # on an unknown key, so the output must be empty, not just the status 0.
        with open(self.path, "a") as f:
            f.write("[Service]\nNoSuchDirective=1\n")
        _, out = self.verify()
        self.assertIn("NoSuchDirective", out)

    def test_verify_with_transparent_drop_in(self):
        shutil.copy(os.path.join(REPO, "dist", "transparent.conf"),
                    os.path.join(self.units, "soth-mitm.service.d"))
        self.assertEqual(self.verify(), (0, ""))
        with open(os.path.join(REPO, "dist", "transparent.conf")) as f:
            d = self.directives(f.read())
        self.assertEqual(d["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE CAP_NET_ADMIN"])
        self.assertEqual(d["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE CAP_NET_ADMIN"])

    def test_promised_settings(self):
        d = self.directives(self.unit)
        self.assertEqual(d["Type"], ["notify"])
        self.assertEqual(d["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(d["User"], ["soth-mitm"])
        self.assertEqual(d["StateDirectory"], ["soth-mitm"])
        self.assertEqual(d["StateDirectoryMode"], ["0700"])
        self.assertEqual(d["RuntimeDirectory"], ["soth-mitm"])
        for k in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
            self.assertEqual(d[k], ["yes"], k)
        self.assertEqual(d["ProtectSystem"], ["strict"])
        self.assertEqual(d["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(d["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"])
        # Two descriptors per connection: 100,000 connections need 200,000 and some.
        self.assertGreaterEqual(int(d["LimitNOFILE"][0]), 200000)
        self.assertFalse([v for vs in d.values() for v in vs if "CAP_NET_ADMIN" in v])


if __name__ == "__main__":
    unittest.main()
