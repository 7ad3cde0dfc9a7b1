#!/bin/sh
# Installs the Debian packages the test suite needs. Idempotent: apt runs only when one is missing.
set -eu
PKGS="haproxy curl python3 wrk openssl rpm rpmlint lintian systemd-container mmdebstrap debhelper devscripts equivs build-essential iproute2 cpio man-db dpkg-dev elfutils"
missing=""
# No cargo on PATH (a fresh Debian/Ubuntu host): Debian's toolchain (the crate builds with rustc 1.63).
# (with its rustfmt and clippy for `make lint`).
command -v cargo >/dev/null 2>&1 || PKGS="$PKGS cargo rustc rustfmt rust-clippy"
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
