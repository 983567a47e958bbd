"""The parity gate (docs/migration.md, "Parity"): tests/differential/diffrun.py runs the whole
fixture corpus (tests/corpus) through --engine soth-mitm and --engine mitmproxy and exits 0
only when the gate holds (100% of decisions and TLS classes agree, >= 99% of event order,
every other difference listed in tests/differential/intended.json). The report is printed
(and kept as $SOTH_BUILD_DIR/differential-report.md) so CI shows it whatever the result.

mitmdump missing is a failure here, never a skip: ci/setup.sh installs it.
"""
import os
import shutil
import subprocess
import sys
import unittest

from harness import BUILD, REPO

RUNNER = os.path.join(REPO, "tests", "differential", "diffrun.py")


class ParityGate(unittest.TestCase):
    def test_docs_list_the_intended_differences(self):
        # docs/migration.md carries the table diffrun.py generates from intended.json
        out = subprocess.run(["/usr/bin/python3", RUNNER, "--list-intended"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        with open(os.path.join(REPO, "docs", "migration.md")) as f:
            doc = f.read()
        self.assertIn(out.stdout, doc, "docs/migration.md's table of intended differences is "
                      "not the one intended.json gives: paste `diffrun.py --list-intended`")

    def test_corpus_passes_the_parity_gate(self):
        if shutil.which("mitmdump") is None:
            raise AssertionError("mitmdump not found: install mitmproxy (ci/setup.sh)")
        report = os.path.join(BUILD, "differential-report.md")
        out = subprocess.run(["/usr/bin/python3", RUNNER, "--report", report],
                             capture_output=True, text=True, timeout=840)
        sys.stderr.write(out.stderr[-4000:])
        sys.stdout.write(out.stdout)
        self.assertEqual(out.returncode, 0,
                         f"parity gate not met (exit {out.returncode}); report: {report}")
        with open(report) as f:
            text = f.read()
        self.assertIn("**Gate: PASS**", text)


if __name__ == "__main__":
    unittest.main()
