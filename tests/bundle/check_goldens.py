#!/usr/bin/env python3
"""Bundle goldens (docs/bundles.md): `soth-mitm --check-bundle` on every bundle here.

valid/NAME.json   must exit 0, print exactly valid/NAME.out on stdout, nothing on stderr;
invalid/NAME.json must exit 2, print exactly the line in invalid/NAME.err on stderr, nothing
on stdout. Paths are given relative to this directory (JSON syntax errors name the file).
The expected files are reviewed by hand; `--update` rewrites them from the current binary
(then review the diff before committing).
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    build = os.environ.get("SOTH_BUILD_DIR") or os.path.join(HERE, "..", "..", "build")
    exe = os.path.join(build, "soth-mitm")
    update = "--update" in sys.argv[1:]
    failures, checked = [], 0
    for kind, want_rc, ext in (("valid", 0, ".out"), ("invalid", 2, ".err")):
        names = sorted(f for f in os.listdir(os.path.join(HERE, kind)) if f.endswith(".json"))
        if not names:
            failures.append(f"{kind}: no bundles")
        for name in names:
            rel = f"{kind}/{name}"
            p = subprocess.run([exe, "--check-bundle", rel], cwd=HERE, capture_output=True,
                               timeout=30)
            got = p.stdout if kind == "valid" else p.stderr
            other = p.stderr if kind == "valid" else p.stdout
            exp_path = os.path.join(HERE, kind, name[:-5] + ext)
            if update and p.returncode == want_rc and not other:
                with open(exp_path, "wb") as f:
                    f.write(got)
            checked += 1
            try:
                with open(exp_path, "rb") as f:
                    want = f.read()
            except FileNotFoundError:
                failures.append(f"{rel}: no {name[:-5] + ext}")
                continue
            if p.returncode != want_rc:
                failures.append(f"{rel}: exit {p.returncode}, want {want_rc}: {p.stderr!r}")
            elif other:
                failures.append(f"{rel}: unexpected output {other!r}")
            elif got != want:
                failures.append(f"{rel}: output differs\n  want {want!r}\n  got  {got!r}")
    for f in failures:
        print("FAIL " + f)
    print(f"{checked} bundles checked, {len(failures)} failures")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
