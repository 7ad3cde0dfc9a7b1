#!/bin/sh
# Puts the other packages of DIR beside the .deb under test into the run directory RUN, for
# tests/e2e/guest/packaging.sh:
#   RUN/src/  the Debian source package (the .dsc and the files its Files: field names): autopkgtest
#   RUN/rpm/  the .rpm's files (root/, unpacked with rpm2cpio) and its %post and %postun scriptlets
#             (post.sh, postun.sh, from rpm -qp): run in the guest against the real haproxy.service
# Nothing to copy is not an error here: the flows fail when they find nothing.
#   tests/e2e/copy-source.sh DIR RUN
set -eu
dir=$1 run=$2
mkdir -p "$run/src" "$run/rpm"
for dsc in "$dir"/haproxy-systemd-wrapper_*.dsc; do
    [ -f "$dsc" ] || continue
    cp "$dsc" "$run/src/"
    for f in $(sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]\{32\} [0-9]* //p' "$dsc"); do cp "$dir/$f" "$run/src/"; done
done
rpm=$(ls "$dir"/haproxy-systemd-wrapper-[0-9]*.rpm 2>/dev/null | grep -v '\.src\.rpm$' | head -n1 || true)
if [ -n "$rpm" ] && command -v rpm2cpio >/dev/null && command -v cpio >/dev/null; then
    mkdir -p "$run/rpm/root"
    (cd "$run/rpm/root" && rpm2cpio "$rpm" | cpio -idm --quiet)
    rpm -qp --qf '%{POSTIN}' "$rpm" > "$run/rpm/post.sh" 2>/dev/null
    rpm -qp --qf '%{POSTUN}' "$rpm" > "$run/rpm/postun.sh" 2>/dev/null
    basename "$rpm" > "$run/rpm/name"
fi
