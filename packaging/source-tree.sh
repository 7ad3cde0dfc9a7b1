#!/bin/sh
# Writes a tar archive of the source tree to stdout, for `make deb` and `make rpm`: the files git
# knows about (tracked, and untracked but not ignored: uncommitted work is built too), or, outside a
# git checkout, everything but target/, dist/ and .git/.
# $1 (optional): a directory prefix for the entries, e.g. "haproxy-systemd-wrapper-0.1.0/".
set -eu
cd "$(dirname "$0")/.."
prefix=${1:-}
set -- --owner=0 --group=0 --numeric-owner --transform "s|^\./||;s|^|$prefix|"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Files deleted from the work tree but still in the index are skipped.
    deleted=$(mktemp)
    trap 'rm -f "$deleted"' EXIT
    git ls-files --deleted >"$deleted"
    git ls-files -z --cached --others --exclude-standard |
        tar -c "$@" --null --no-recursion --exclude-from="$deleted" -T -
else
    tar -c "$@" --exclude=./target --exclude=./dist --exclude=./.git .
fi
