#!/usr/bin/env bash
# The service lane (docs/operating.md, "Checked under systemd"): installs the Debian package
# into a clean Debian 12 minbase root with apt, boots that root with systemd as PID 1 in a
# systemd-nspawn container (its own network namespace: only loopback) and checks the service as
# an operator would meet it: started only once listening (Type=notify), running as soth-mitm with
# CAP_NET_BIND_SERVICE alone, no new privileges and a seccomp filter, the CA in
# /var/lib/soth-mitm (0700), an HTTPS request intercepted through it, `systemctl reload`
# applying a policy change and surviving an invalid file, `systemctl stop` draining, a bad
# config failing with status 2 and no restart loop, the transparent drop-in adding
# CAP_NET_ADMIN, and purge removing the CA and logs.
#
#   sudo bash ci/service-root.sh [DEB]    # DEB default: build-pkg/soth-mitm_*_amd64.deb
#
# SOTH_ROOT_FROM=DIR copies an existing minbase root (e.g. one ci/fresh-root.sh left) instead of
# running debootstrap. Needs root, the network (Debian mirror) and about 5 minutes. Not part of
# ci/test.sh: it needs a systemd-nspawn, which, when the host has none, is taken from Debian's
# systemd-container package unpacked into the work directory (nothing is installed on the host).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "$(id -u)" != 0 ]; then
    echo "service-root: run as root (debootstrap, chroot, systemd-nspawn)" >&2
    exit 2
fi
deb=${1:-$(ls "$repo"/build-pkg/soth-mitm_*_amd64.deb 2>/dev/null | head -n 1 || true)}
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
    echo "service-root: no package; run bash ci/package.sh first" >&2
    exit 2
fi
work=$(mktemp -d /var/tmp/soth-service-root.XXXXXX)
root=$work/root
t0=$(date +%s)
lap() { echo "service-root: $* ($(($(date +%s) - t0)) s)"; }

nspawn_pid=
mounted=()
cleanup() {
    set +e
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" # nspawn powers the container off on SIGTERM
        for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$nspawn_pid" 2>/dev/null
    fi
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}"; done
    rm -rf "$work"
}
trap cleanup EXIT

# ---- a minbase root with systemd and the package, installed by apt as a user would
if [ -n "${SOTH_ROOT_FROM:-}" ]; then
    cp -a "$SOTH_ROOT_FROM" "$root"
else
    command -v debootstrap >/dev/null || {
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
    }
    mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
        grep -v security | head -n 1 || true)
    debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" \
        >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log"; exit 1; }
fi
lap "root ready"
for m in proc dev; do
    mount --bind "/$m" "$root/$m"
    mounted+=("$root/$m")
done
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/root/"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" # no service starts in the chroot
chmod 755 "$root/usr/sbin/policy-rc.d"
if ! chroot "$root" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install \
        -y -q --no-install-recommends systemd systemd-sysv curl \
        /root/$(basename "$deb")" >"$work/apt.log" 2>&1; then
    tail -n 30 "$work/apt.log"
    exit 1
fi
rm -f "$root/usr/sbin/policy-rc.d"
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}"; done
mounted=()
lap "package installed with apt ($(grep -c '^Setting up' "$work/apt.log") packages)"

# ---- systemd-nspawn: the host's, else Debian's unpacked here
nspawn=$(command -v systemd-nspawn || true)
if [ -z "$nspawn" ]; then
    mkdir -p "$work/tools"
    (cd "$work/tools" && apt-get download -q -o APT::Sandbox::User=root \
        systemd-container libsystemd-shared >/dev/null)
    for d in "$work"/tools/*.deb; do dpkg -x "$d" "$work/tools/x"; done
    nspawn=$work/tools/x/usr/bin/systemd-nspawn
    export LD_LIBRARY_PATH=$work/tools/x/usr/lib/x86_64-linux-gnu/systemd
fi

# ---- the checks, run inside the booted container
cat >"$root/root/check.sh" <<'CHECK'
#!/bin/sh
set -eu
fail() { echo "FAIL: $*"; journalctl -u soth-mitm --no-pager -n 30; exit 1; }
ok() { echo "ok: $*"; }
unit=soth-mitm
pid() { systemctl show -p MainPID --value $unit; }
cfg=/etc/soth-mitm/config.json
cp $cfg /root/config.json.orig

systemctl is-active -q $unit || fail "service not active after boot"
# Type=notify: systemd logs "Started" only after READY=1, which follows the readiness line.
j=$(journalctl -u $unit --no-pager -o cat)
l=$(printf '%s\n' "$j" | grep -n 'listening on 127.0.0.1:8080' | head -n 1 | cut -d: -f1)
s=$(printf '%s\n' "$j" | grep -n '^Started soth-mitm' | head -n 1 | cut -d: -f1)
[ -n "$l" ] && [ -n "$s" ] && [ "$l" -lt "$s" ] || fail "Started before the readiness line"
ok "Type=notify: started after 'listening on 127.0.0.1:8080'"
st=/proc/$(pid)/status
[ "$(stat -c %U /proc/$(pid))" = soth-mitm ] || fail "not running as soth-mitm"
grep -q '^CapEff:.*0000000000000400$' $st || fail "capabilities: $(grep CapEff $st)"
grep -q '^NoNewPrivs:.*1' $st || fail "NoNewPrivs"
grep -q '^Seccomp:.*2' $st || fail "no seccomp filter"
ok "user soth-mitm, CapEff CAP_NET_BIND_SERVICE only, NoNewPrivs, seccomp filter"
[ "$(stat -c %a:%U /var/lib/soth-mitm)" = 700:soth-mitm ] || fail "/var/lib/soth-mitm mode"
[ -s /var/lib/soth-mitm/soth-mitm-ca.pem ] || fail "no CA"
[ -f /run/soth-mitm/events.ring ] || fail "no event ring"
ok "CA in /var/lib/soth-mitm (0700), ring in /run/soth-mitm"

# An HTTPS origin on loopback: a second soth-mitm in reverse mode in front of the service's
# metrics endpoint, with a leaf from the same CA, which the service is told to trust upstream.
cat >$cfg <<EOF
{ "listen": "127.0.0.1:8080", "policy": { "default": "intercept" },
  "tls": { "ca_dir": "/var/lib/soth-mitm",
           "upstream_ca_file": "/var/lib/soth-mitm/soth-mitm-ca.pem" },
  "events": { "ring_path": "/run/soth-mitm/events.ring",
              "sinks": [ { "type": "jsonl", "path": "/var/log/soth-mitm/events.jsonl" } ] },
  "metrics": { "listen": "127.0.0.1:9100" } }
EOF
systemctl restart $unit
setsid /usr/bin/soth-mitm --mode reverse:http://127.0.0.1:9100 --listen 127.0.0.1:8443 \
    --workers 1 --ca-dir /var/lib/soth-mitm --event-ring /root/origin.ring \
    >/root/origin.log 2>&1 &
origin=$!
for _ in $(seq 50); do grep -q 'listening on' /root/origin.log && break; sleep 0.1; done
get() {
    curl -sS -o /dev/null -w '%{http_code}' --cacert /var/lib/soth-mitm/soth-mitm-ca.pem \
        -x http://127.0.0.1:8080 https://127.0.0.1:8443/metrics 2>/dev/null || true
}
[ "$(get)" = 200 ] || fail "intercepted request through the service"
setpriv --reuid=soth-mitm --regid=soth-mitm --clear-groups \
    soth-mitm-tail --from-start --once --type request_headers /run/soth-mitm/events.ring |
    grep -q '"type":"request_headers"' || fail "no request_headers event in the ring"
grep -q '"type":"request_headers"' /var/log/soth-mitm/events.jsonl || fail "jsonl sink"
ok "HTTPS intercepted (200), events in the ring (soth-mitm-tail) and the jsonl sink"

sed -i 's/"default": "intercept"/"default": "intercept", "rules": [ { "host": "127.0.0.1:8443", "action": "block" } ]/' $cfg
main=$(pid)
systemctl reload $unit || fail "systemctl reload"
[ "$(pid)" = "$main" ] || fail "reload restarted the process"
[ "$(get)" = 000 ] || fail "block rule not applied by reload"
echo '{ not json' >$cfg
systemctl reload $unit || fail "systemctl reload of an invalid file"
systemctl is-active -q $unit || fail "inactive after an invalid reload"
journalctl -u $unit --no-pager -o cat | grep -q 'reload failed, keeping the old policy' ||
    fail "invalid reload not logged"
ok "reload: policy applied in place (CONNECT refused), invalid file logged, service kept"

systemctl stop $unit
systemctl is-active -q $unit && fail "still active after stop"
journalctl -u $unit --no-pager -o cat | grep -q 'SIGTERM: draining' || fail "no drain"
[ ! -e /run/soth-mitm ] || fail "/run/soth-mitm left behind"
ok "stop: drained, runtime directory removed"

systemctl start $unit 2>/dev/null && fail "started with an invalid config"
sleep 2
[ "$(systemctl show -p ExecMainStatus --value $unit)" = 2 ] || fail "bad config: status"
[ "$(systemctl show -p NRestarts --value $unit)" = 0 ] || fail "bad config: restarted"
ok "invalid config: exit status 2, no restart loop"

cp /root/config.json.orig $cfg
install -D -m 0644 /usr/share/doc/soth-mitm/examples/transparent.conf \
    /etc/systemd/system/soth-mitm.service.d/transparent.conf
systemctl daemon-reload
systemctl reset-failed $unit
systemctl start $unit
grep -q '^CapEff:.*0000000000001400$' /proc/$(pid)/status || fail "drop-in capabilities"
ok "transparent drop-in: CAP_NET_BIND_SERVICE + CAP_NET_ADMIN"

kill $origin
dpkg --purge soth-mitm >/dev/null
[ ! -e /var/lib/soth-mitm ] && [ ! -e /var/log/soth-mitm ] && [ ! -e /etc/soth-mitm ] ||
    fail "purge left files"
ok "purge: CA, logs and config removed"
echo "ALL OK"
CHECK
chmod 755 "$root/root/check.sh"

setsid "$nspawn" -D "$root" -b --register=no --keep-unit --private-network \
    --console=passive >"$work/boot.log" 2>&1 &
nspawn_pid=$!
init=
for _ in $(seq 120); do
    init=$(ps --ppid "$nspawn_pid" -o pid= | tr -d ' ' || true)
    if [ -n "$init" ]; then
        state=$(nsenter -t "$init" -a systemctl is-system-running --wait 2>/dev/null || true)
        case $state in running | degraded) break ;; esac
    fi
    sleep 0.5
done
lap "container booted (systemd: $state)"
nsenter -t "$init" -a /root/check.sh
lap "service checked"
