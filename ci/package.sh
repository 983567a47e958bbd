#!/usr/bin/env bash
# The package lane (docs/operating.md, "Install"; ci/test.sh runs it): builds the Debian
# package from the working tree with `dpkg-buildpackage -b` in a scratch copy, runs lintian
# on it (any error fails the lane; warnings are printed), unpacks it into an empty directory
# tree and runs the installed programs from there: `soth-mitm --version` (must print the
# package's version), `--check-config` on the installed default config (must listen on
# loopback), `soth-mitm-tail --help`; and `systemd-analyze verify` on the installed unit.
#
#   bash ci/package.sh [OUTDIR]     # .deb, build log and the unpacked tree in OUTDIR
#                                   # (default build-pkg/, replaced on every run)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-$root/build-pkg}
t0=$(date +%s)
lap() { echo "package: $* ($(($(date +%s) - t0)) s)"; }

# Every library CMakeLists.txt looks for (but the test-only ones and wolfSSL, which comes from
# ci/setup.sh's build) must be in debian/control's Build-Depends: the package that ships the
# .pc file pkg-config finds.
/usr/bin/python3 - <<'PY'
import re, subprocess, sys
cmake = re.sub(r"(?ms)^if\(SOTH_TESTS\).*?^endif\(\)", "", open("CMakeLists.txt").read())
mods = re.findall(r"pkg_check_modules\(\w+ REQUIRED IMPORTED_TARGET ([\w.+-]+)", cmake)
control = open("debian/control").read()
bd = re.search(r"(?ms)^Build-Depends:(.*?)^(?=\S)", control).group(1)
have = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", re.sub(r"\([^)]*\)", "", bd)))
missing = []
for m in mods:
    if m == "wolfssl":
        continue
    pcdir = subprocess.run(["pkg-config", "--variable=pcfiledir", m], capture_output=True,
                           text=True).stdout.strip()
    owner = subprocess.run(["dpkg", "-S", f"{pcdir}/{m}.pc"], capture_output=True,
                           text=True).stdout.split(":")[0]
    if not owner or owner not in have:
        missing.append(f"{m} ({owner or 'no package owns its .pc file'})")
if missing:
    sys.exit("package: debian/control Build-Depends lacks " + ", ".join(missing))
print(f"package: Build-Depends covers the {len(mods) - 1} libraries CMakeLists.txt looks for")
PY

rm -rf "$out"
mkdir -p "$out/src"
# The tree as git sees it (tracked files and new ones not ignored), without build directories.
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
    tar --null -T - -cf - | tar -xf - -C "$out/src"

if ! (cd "$out/src" && dpkg-buildpackage -b -us -uc -j"$(nproc)") >"$out/build.log" 2>&1; then
    tail -n 60 "$out/build.log"
    echo "package: dpkg-buildpackage failed (log: $out/build.log)" >&2
    exit 1
fi
deb=$(ls "$out"/soth-mitm_*_amd64.deb)
lap "built $(basename "$deb")"
dpkg-deb --field "$deb" Package Version Architecture Depends Built-Using
echo "package: contents"
dpkg-deb --contents "$deb" | awk '{print $1, $3, $6}'

# lintian: errors fail the lane, warnings and the rest are printed.
if ! lintian --fail-on error --display-info "$deb" >"$out/lintian.log" 2>&1; then
    cat "$out/lintian.log"
    echo "package: lintian reports errors" >&2
    exit 1
fi
echo "package: lintian (no errors; $(grep -c '^[WIP]:' "$out/lintian.log" || true) other tags)"
cat "$out/lintian.log"
lap "lintian done"

tree=$out/root
mkdir "$tree"
dpkg -x "$deb" "$tree"
bin=$tree/usr/bin/soth-mitm
if ldd "$bin" | grep -i wolfssl; then
    echo "package: soth-mitm links wolfSSL dynamically; it must be static" >&2
    exit 1
fi
version=$(dpkg-deb --field "$deb" Version)
got=$("$bin" --version)
if [ "$got" != "soth-mitm ${version%%-*}" ]; then
    echo "package: --version printed \"$got\", the package is $version" >&2
    exit 1
fi
echo "package: $got"
"$bin" --check-config "$tree/etc/soth-mitm/config.json" >"$out/effective.json"
/usr/bin/python3 - "$out/effective.json" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
assert cfg["listen"].startswith("127.0.0.1:"), cfg["listen"]
assert cfg["tls"]["ca_dir"] == "/var/lib/soth-mitm", cfg["tls"]
assert cfg["events"]["ring_path"] == "/run/soth-mitm/events.ring", cfg["events"]
print("package: --check-config of /etc/soth-mitm/config.json: listen", cfg["listen"])
EOF
"$tree/usr/bin/soth-mitm-tail" --help >/dev/null

# systemd-analyze verify needs ExecStart's program on this host: point it into the tree.
unit=$tree/lib/systemd/system/soth-mitm.service
mkdir -p "$out/verify"
sed "s#^ExecStart=/usr/bin/soth-mitm #ExecStart=$bin #" "$unit" >"$out/verify/soth-mitm.service"
grep -q "^ExecStart=$bin --config /etc/soth-mitm/config.json$" "$out/verify/soth-mitm.service"
msgs=$(MANPATH=$tree/usr/share/man systemd-analyze verify "$out/verify/soth-mitm.service" 2>&1)
if [ -n "$msgs" ]; then
    echo "$msgs"
    echo "package: systemd-analyze verify complains about the installed unit" >&2
    exit 1
fi
lap "installed tree checked: --version, --check-config, systemd-analyze verify"
