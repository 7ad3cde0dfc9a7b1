#!/usr/bin/env bash
# End-to-end flows of the .deb under a real systemd: boots a Debian guest per suite with
# systemd-nspawn, installs the package there and runs tests/e2e/guest/flows.sh (see docs/e2e.md).
#
#   tests/e2e/run.sh [--deb FILE] [--smoke] [SUITE...]      SUITE: bookworm trixie sid (default: all three)
#
#   --deb FILE   the package to test (default: the newest dist/haproxy-systemd-wrapper_*.deb)
#   --smoke      no package: only boot each guest, run the harness self-checks, power off
#
# Environment: E2E_CACHE (root cache, default /var/cache/haproxy-systemd-wrapper-e2e),
# E2E_TIMEOUT (seconds per guest, whole boot-to-poweroff, default 900), E2E_KEEP=1 (keep the run
# directories with the guests' output, journal and trace), E2E_FLOWS (e.g. "1 2 5": run only these).
# Ends with "N passed, M failed"; a run that covers less than every flow in every guest adds what it
# left out: "(PARTIAL: flows 1 2 only, suites bookworm only)". Exits 1 if anything failed, 2 on a
# usage or setup error (an unknown flow in E2E_FLOWS is one).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
deb=
smoke=0
suites=()
while [ $# -gt 0 ]; do
    case $1 in
        --deb) deb=${2:?--deb needs a file}; shift 2 ;;
        --smoke) smoke=1; shift ;;
        bookworm|trixie|sid) suites+=("$1"); shift ;;
        *) echo "usage: $0 [--deb FILE] [--smoke] [bookworm] [trixie] [sid]" >&2; exit 2 ;;
    esac
done
all_suites=(bookworm trixie sid)
[ ${#suites[@]} -gt 0 ] || suites=("${all_suites[@]}")
# What this run leaves out, for its last line: a count over less than everything must say so.
known_flows=$(sed -n 's/^if wanted \([0-9A-Za-z-]*\); then$/\1/p' "$here"/guest/*.sh | tr '\n' ' ' | sed 's/ $//')
flows=$(echo ${E2E_FLOWS:-})
for f in $flows; do
    case " $known_flows " in *" $f "*) ;; *)
        echo "e2e: E2E_FLOWS: unknown flow '$f' (the flows: $known_flows)" >&2; exit 2 ;;
    esac
done
partial=()
[ -z "$flows" ] || partial+=("flows $flows only")
missing=()
for s in "${all_suites[@]}"; do [[ " ${suites[*]} " == *" $s "* ]] || missing+=("$s"); done
[ ${#missing[@]} = 0 ] || partial+=("suites $(printf '%s\n' "${suites[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//') only")
[ "$smoke" = 0 ] || partial+=("--smoke: no package, harness self-checks only")
timeout_s=${E2E_TIMEOUT:-900}
[ "$timeout_s" -ge 120 ] 2>/dev/null || { echo "e2e: E2E_TIMEOUT must be >= 120 (seconds)" >&2; exit 2; }
guest_timeout=$(( timeout_s - 60 ))   # the guest gives up first, so its output still comes back

die() { echo "e2e: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, systemd-nspawn)"
for tool in systemd-nspawn mmdebstrap dpkg-deb timeout flock unshare; do
    command -v "$tool" >/dev/null || die "$tool not found (make deps installs systemd-container and mmdebstrap)"
done
if [ "$smoke" = 0 ]; then
    if [ -z "$deb" ]; then
        deb=$(ls -1 "$repo"/dist/haproxy-systemd-wrapper_*.deb 2>/dev/null | grep -v -- -dbgsym | sort -V | tail -n1 || true)
        [ -n "$deb" ] || die "no dist/haproxy-systemd-wrapper_*.deb: run 'make deb' (or make test-e2e)"
    fi
    [ -f "$deb" ] || die "$deb: no such file"
    echo "e2e: package $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) ($deb)"
fi

# One run at a time on this machine: the guests run in our cgroup (--keep-unit), and a second run's
# guests would share it. A concurrent run waits here (bounded) instead of failing.
lock=/run/lock/haproxy-systemd-wrapper-e2e.lock
mkdir -p /run/lock
exec 8>"$lock"
if ! flock -n 8; then
    echo "e2e: another run holds $lock; waiting (at most 30 min)"
    flock -w 1800 8 || die "timed out waiting for $lock"
fi

total_pass=0
total_fail=0
summary=()
for suite in "${suites[@]}"; do
    echo "=== $suite ==="
    t0=$(date +%s)
    if ! root=$("$here/build-root.sh" "$suite"); then
        echo "FAIL $suite: could not build the guest root"
        total_fail=$((total_fail + 1)); summary+=("$suite: root build failed"); continue
    fi
    t1=$(date +%s)

    run=$(mktemp -d /tmp/haproxy-systemd-wrapper-e2e-"$suite".XXXXXX)
    mkdir -p "$run/out" "$run/deb"
    cp -r "$here/guest" "$run/guest"
    # The example Ansible role the automation flows run (guest/automation.sh).
    cp -r "$repo/examples" "$run/examples"
    [ -n "$deb" ] && cp "$deb" "$run/deb/"
    # The source package and the .rpm beside the .deb (autopkgtest, RPM scriptlets: guest/packaging.sh).
    [ -n "$deb" ] && "$here/copy-source.sh" "$(dirname "$deb")" "$run"
    sed "s/@GUEST_TIMEOUT@/$guest_timeout/" "$here/guest/e2e-run.service" > "$run/e2e-run.service"
    printf 'E2E_SUITE=%s\nE2E_FLOWS="%s"\n' "$suite" "${E2E_FLOWS:-}" > "$run/env"

    # On these hosts nspawn cannot register with (or create a scope through) a host systemd, so it
    # runs in our own cgroup (--keep-unit): one guest at a time. systemd >= 256 (trixie, sid) refuses
    # a legacy/hybrid cgroup hierarchy, so those guests get the unified one.
    nspawn_env=()
    case $suite in trixie|sid) nspawn_env=(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) ;; esac
    set +e
    # unshare: nspawn runs as PID 1 of a PID namespace of its own, so even a SIGKILL (timeout's
    # --kill-after) takes the whole guest with it; a killed nspawn would otherwise leave the guest's
    # systemd running. timeout's SIGTERM reaches nspawn, which powers the guest off.
    env "${nspawn_env[@]}" timeout --kill-after=20 "$timeout_s" \
        unshare --pid --fork --kill-child \
        systemd-nspawn --quiet --directory="$root" --volatile=overlay --boot \
            --register=no --keep-unit --private-network --console=read-only \
            --machine="e2e-$suite-$$" \
            --bind="$run:/e2e" \
            --bind-ro="$run/e2e-run.service:/etc/systemd/system/e2e-run.service" \
            systemd.wants=e2e-run.service \
        > "$run/console.log" 2>&1
    rc=$?
    set -e
    t2=$(date +%s)

    if [ -f "$run/out/counts" ]; then
        cat "$run/out/result.txt"
        read -r pass fail < "$run/out/counts"
    else
        echo "FAIL $suite: the guest did not finish (systemd-nspawn exit $rc$([ $rc = 124 ] && echo ", timed out after ${timeout_s} s"))"
        [ -f "$run/out/result.txt" ] && { echo "--- output so far:"; cat "$run/out/result.txt"; }
        echo "--- the guest console, flow lines and the end:"
        grep -E 'e2e-run|flows\.sh' "$run/console.log" | tail -n 20; tail -n 8 "$run/console.log"
        pass=$(grep -c '^ok ' "$run/out/result.txt" 2>/dev/null || true)
        fail=$(( $(grep -c '^FAIL ' "$run/out/result.txt" 2>/dev/null || true) + 1 ))
    fi
    total_pass=$((total_pass + pass)); total_fail=$((total_fail + fail))
    line="$suite: $pass passed, $fail failed (root $((t1 - t0)) s, boot+flows+poweroff $((t2 - t1)) s)"
    summary+=("$line")
    echo "$line"
    if [ "${E2E_KEEP:-0}" = 1 ] || [ "$fail" -gt 0 ]; then
        echo "(output, journal and trace kept in $run/out, console in $run/console.log)"
    else
        rm -rf --one-file-system "$run"
    fi
done

echo "=== summary ==="
printf '%s\n' "${summary[@]}"
note=
[ ${#partial[@]} = 0 ] || note=" (PARTIAL: $(printf '%s, ' "${partial[@]}" | sed 's/, $//'))"
echo "$total_pass passed, $total_fail failed$note"
[ "$total_fail" = 0 ]
