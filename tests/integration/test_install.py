"""`cmake --install` (docs/operating.md, "cmake --install"): into a DESTDIR it puts the two
programs, the three manual pages, the systemd unit and the default config, and nothing else;
the installed program accepts the installed config and the unit names both."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import BUILD


def cache(name):
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} not in CMakeCache.txt")


class InstallTests(unittest.TestCase):
    def setUp(self):
        self.dest = tempfile.mkdtemp(prefix="soth-install-")
        self.addCleanup(shutil.rmtree, self.dest, True)
        out = subprocess.run(["cmake", "--install", BUILD], capture_output=True, timeout=300,
                             env=dict(os.environ, DESTDIR=self.dest))
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.prefix = cache("CMAKE_INSTALL_PREFIX")

    def test_installs_exactly_the_programs_pages_unit_and_config(self):
        # (and the mitmproxy addon of --engine mitmproxy, docs/bridge.md)
        files = set()
        for d, _, names in os.walk(self.dest):
            for n in names:
                files.add(os.path.relpath(os.path.join(d, n), self.dest))
        p = self.prefix.lstrip("/")
        etc = "etc" if self.prefix == "/usr" else p + "/etc"
        unitdir = cache("SOTH_SYSTEMD_UNITDIR")
        unitdir = unitdir.lstrip("/") if unitdir.startswith("/") else f"{p}/{unitdir}"
        self.assertEqual(files, {
            f"{p}/bin/soth-mitm", f"{p}/bin/soth-mitm-tail",
            f"{p}/share/man/man1/soth-mitm.1", f"{p}/share/man/man1/soth-mitm-tail.1",
            f"{p}/share/man/man5/soth-mitm.json.5",
            f"{p}/share/soth-mitm/soth_bridge.py",
            f"{unitdir}/soth-mitm.service",
            f"{etc}/soth-mitm/config.json",
        })
        self.bin = os.path.join(self.dest, p, "bin", "soth-mitm")
        self.config = os.path.join(self.dest, etc, "soth-mitm", "config.json")
        self.unit = os.path.join(self.dest, unitdir, "soth-mitm.service")

        # The installed program takes the installed default config: loopback, the service's
        # CA and ring directories.
        out = subprocess.run([self.bin, "--check-config", self.config], capture_output=True,
                             timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        cfg = json.loads(out.stdout)
        self.assertEqual(cfg["listen"], "127.0.0.1:8080")
        self.assertEqual(cfg["tls"]["ca_dir"], "/var/lib/soth-mitm")
        self.assertEqual(cfg["events"]["ring_path"], "/run/soth-mitm/events.ring")

        # The unit starts the installed program on the installed config.
        with open(self.unit) as f:
            unit = f.read()
        m = re.search(r"(?m)^ExecStart=(\S+) --config (\S+)$", unit)
        self.assertIsNotNone(m, unit)
        self.assertEqual(m.group(1), "/" + os.path.relpath(self.bin, self.dest))
        self.assertEqual(m.group(2), "/" + os.path.relpath(self.config, self.dest))


if __name__ == "__main__":
    unittest.main()
