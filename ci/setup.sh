#!/usr/bin/env bash
# Installs every dependency soth-mitm needs on Debian 12, idempotently: does nothing
# when everything is already present. Run as root (or with sudo available).
#
#   bash ci/setup.sh            # libraries, tools, test clients, wolfSSL (AES-NI build)
#
# wolfSSL is built from Debian's own source package (see docs/dependencies.md) into
# $SOTH_DEPS_DIR (default: ~/.cache/soth-mitm/deps), outside the source tree.
set -euo pipefail
# A step that fails says which (set -e alone would stop without a word).
trap 'echo "setup: FAILED at ci/setup.sh line $LINENO: $BASH_COMMAND" >&2' ERR

SOTH_DEPS_DIR=${SOTH_DEPS_DIR:-$HOME/.cache/soth-mitm/deps}
ci_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WOLFSSL_PREFIX=$SOTH_DEPS_DIR/wolfssl
# Bump when the configure line or ci/patches change so cached builds are redone.
WOLFSSL_STAMP="wolfssl-5.5.4-cfg14"
WOLFSSL_MIN_SOURCE="5.5.4-2+deb12u3"

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# Every Python module the tests import and every program they run comes from a package here
# (docs/dependencies.md): a test must not pass only because some other
# setup (bench/setup.sh) happened to pull a module in as a dependency.
PKGS=(build-essential cmake pkg-config clang clang-format libclang-rt-14-dev git python3-pyflakes
    liburing-dev libnghttp2-dev libxxhash-dev libcriterion-dev node-llhttp libjansson-dev
    autoconf automake libtool dpkg-dev patch
    curl nghttp2-client wrk nginx-light openssl ca-certificates
    python3 python3-h2 python3-hpack python3-hyperframe python3-websockets python3-grpcio
    python3-cryptography python3-brotli python3-zstandard python3-msgpack
    iproute2 nftables procps psmisc util-linux coreutils
    zlib1g-dev libbrotli-dev libzstd-dev libmsgpack-dev
    ngtcp2-client ngtcp2-server
    debhelper fakeroot lintian mandoc groff-base man-db systemd
    testssl.sh mitmproxy
    libnats-dev nats-server
    tcpdump tshark valgrind
    squid)

missing=()
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
for p in "${PKGS[@]}"; do
    # squid-openssl (bench/setup.sh's peer) is squid with ssl-bump: the same /usr/sbin/squid for
    # the tests, and installing squid would remove it.
    if [ "$p" = squid ] && installed squid-openssl; then
        continue
    fi
    if ! installed "$p"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -q
    # Packages with a service (nginx-light) start it from their postinst; the tests and the
    # benchmarks run their own instances on loopback ports of their choosing, so a policy-rc.d
    # that denies every start is in place for the install (unless the machine has one already).
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        own_policy=1
        trap '$SUDO rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ "$own_policy" = 1 ]; then
        $SUDO rm -f "$policy"
        trap - EXIT
    fi
fi

# No system nginx on port 80, whether this run installed it or an earlier one did: stop the
# service and keep it from starting at boot.
if [ -e /lib/systemd/system/nginx.service ] || [ -e /etc/init.d/nginx ]; then
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
    else
        if [ -x /etc/init.d/nginx ] && $SUDO /etc/init.d/nginx status >/dev/null 2>&1; then
            $SUDO /etc/init.d/nginx stop >/dev/null 2>&1 || true
        fi
        if command -v systemctl >/dev/null 2>&1; then
            $SUDO systemctl disable nginx >/dev/null 2>&1 || true
        fi
    fi
    if [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
        echo "setup: the system nginx (pid $(cat /run/nginx.pid)) is still running; stop it" >&2
        exit 1
    fi
fi

wolfssl_ok() {
    [ -f "$WOLFSSL_PREFIX/.stamp" ] && [ "$(cat "$WOLFSSL_PREFIX/.stamp")" = "$WOLFSSL_STAMP" ] &&
        [ -f "$WOLFSSL_PREFIX/lib/libwolfssl.a" ]
}

if ! wolfssl_ok; then
    echo "setup: building wolfSSL from Debian's source package into $WOLFSSL_PREFIX"
    # The source package comes from the mirrors of the binary packages, security updates
    # included: bookworm-security carries the wolfSSL fixes that bookworm does not
    # (docs/dependencies.md). deb-src entries for suites the machine already has are left alone.
    have_src=$(apt-get indextargets --format '$(CREATED_BY) $(RELEASE)' 2>/dev/null |
        awk '$1 == "Sources" {print $2}' || true)
    added=0
    if ! grep -qx bookworm <<<"$have_src"; then
        # The mirror of the binary packages: deb822 sources first, then the one-line format of
        # a minbase root's /etc/apt/sources.list (either may be absent: no match is no error).
        uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
            grep -v security | head -1 || true)
        if [ -z "$uri" ]; then
            uri=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' |
                grep -v security | head -1 || true)
        fi
        uri=${uri:-http://deb.debian.org/debian}
        printf 'Types: deb-src\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$uri" | $SUDO tee /etc/apt/sources.list.d/soth-mitm-src.sources >/dev/null
        added=1
    fi
    if ! grep -qx bookworm-security <<<"$have_src"; then
        sec=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
            grep security | head -1 || true)
        if [ -z "$sec" ]; then
            sec=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' |
                grep security | head -1 || true)
        fi
        sec=${sec:-http://deb.debian.org/debian-security}
        printf 'Types: deb-src\nURIs: %s\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$sec" | $SUDO tee /etc/apt/sources.list.d/soth-mitm-src-security.sources >/dev/null
        added=1
    fi
    if [ "$added" = 1 ]; then
        $SUDO apt-get update -q
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get source -q wolfssl >/dev/null)
    src=$(find "$work" -maxdepth 1 -type d -name 'wolfssl-*' | head -1)
    # The oldest source with the security fixes we rely on (docs/dependencies.md): a mirror
    # without bookworm-security must not give an older library without a word.
    dsc=$(basename "$(ls "$work"/wolfssl_*.dsc | head -n 1)" .dsc)
    if ! dpkg --compare-versions "${dsc#wolfssl_}" ge "$WOLFSSL_MIN_SOURCE"; then
        echo "setup: apt-get source gave wolfssl ${dsc#wolfssl_}, older than $WOLFSSL_MIN_SOURCE" \
            "(bookworm-security): check the deb-src entries in /etc/apt/sources.list.d" >&2
        exit 1
    fi
    cd "$src"
    # Our fixes on top of Debian's patches (docs/dependencies.md says what each one fixes).
    for p in "$ci_dir"/patches/wolfssl-*.patch; do
        patch -p1 --forward --quiet <"$p"
    done
    ./autogen.sh >/dev/null 2>&1 || autoreconf -fi >/dev/null
    # The configure line is documented in docs/dependencies.md; keep both in step.
    ./configure --prefix="$WOLFSSL_PREFIX" \
        --enable-static --disable-shared --disable-examples --disable-crypttests \
        --enable-tls13 --enable-sni --enable-alpn --enable-certgen --enable-keygen \
        --enable-certext --enable-opensslextra --enable-session-ticket \
        --enable-aesni --enable-intelasm --enable-aesgcm=word --enable-sp=yes,asm --enable-sp-asm \
        --enable-ecc --enable-curve25519 --enable-ed25519 \
        --enable-supportedcurves --enable-harden --enable-ip-alt-name --enable-altcertchains \
        --enable-keying-material \
        CFLAGS="-O2 -DWOLFSSL_ALT_NAMES -DHAVE_EX_DATA -DHAVE_SECRET_CALLBACK" >/dev/null
    make -j"$(nproc)" >/dev/null
    rm -rf "$WOLFSSL_PREFIX"
    make install >/dev/null
    echo "$WOLFSSL_STAMP" >"$WOLFSSL_PREFIX/.stamp"
    # The source package version, for the Debian package's Built-Using field (debian/rules).
    echo "wolfssl (= ${dsc#wolfssl_})" >"$WOLFSSL_PREFIX/.debian-source"
    cd /
fi
echo "setup: all dependencies present (wolfSSL in $WOLFSSL_PREFIX)"
