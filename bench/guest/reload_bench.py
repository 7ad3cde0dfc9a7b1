#!/usr/bin/env python3
"""Inside a booted Debian guest (started by bench/systemd_bench.py): `systemctl reload haproxy` wall
time on a large configuration, for the distribution's own haproxy.service against the wrapper's drop-in.

Input (/bench, bound by the host): settings.json, deb/*.deb, haproxy.cfg.in (the configuration with
@TAG@ where the served body goes), certs/ (PEM files and crt-list.txt).
Output (/bench/out): result.json (every reload's figures), log.txt (what was done), journal.txt.

Variants (alternating, the order rotates every round; each run is a fresh `systemctl restart`):
  dist             the distribution's unit: the package's drop-in masked by a /dev/null link of the
                   same name in /etc/systemd/system/haproxy.service.d/
  dist-hardened    the same, plus the drop-in's sandboxing lines (ProtectSystem=, ...) in an override:
                   tells what the hardening costs a reload
  wrapper          the package's drop-in as shipped
  wrapper-nocheck  the drop-in, with an override that resets ExecReload= and keeps the drop-in's
                   ExecReload= lines except the configuration check (`haproxy ... -c ...`)
  wrapper-wait, wrapper-wait-nocheck
                   the same two with `ExecReload=/usr/sbin/haproxy-systemd-wrapper --wait-reload
                   $MAINPID` appended, while the shipped drop-in does not end with it yet (skipped
                   when it does, or when the wrapper has no --wait-reload)

One reload: write the configuration with a new tag, time `systemctl reload haproxy` (wall), probe the
port once right after it returned (served the new tag = synchronous), then poll until the new tag
serves (reload -> served) and until the old generation is gone (only the master and one worker), so the
next reload starts from a settled service. Waits are bounded polls, never a fixed sleep.

The trace phase (host ftrace, see systemd_bench.py): the guest names the wrapper's and the master's pids
in out/trace-request, waits for out/trace-on, reloads, writes out/trace-off and waits for
out/trace-done. Only processes this script started are signalled (none but its own children).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

B = "/bench"
OUT = B + "/out"
CFG = "/etc/haproxy/haproxy.cfg"
DROPIN_DIR = "/etc/systemd/system/haproxy.service.d"
NOCHECK = DROPIN_DIR + "/zz-bench-nocheck.conf"
CERTS = "/etc/haproxy/bench"
PORT = 8080
LOG = []


def log(msg):
    line = "%s %s" % (time.strftime("%H:%M:%S"), msg)
    if not LOG:
        LOG.append(open(OUT + "/log.txt", "a"))
    LOG[0].write(line + "\n")
    LOG[0].flush()
    print("reload-bench: " + msg, flush=True)


def now():
    return time.monotonic()


def run(argv, timeout=120, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), p.returncode, (p.stdout + p.stderr).strip()[-2000:]))
    return p


def prop(name):
    return run(["systemctl", "show", "--value", "-p", name, "haproxy"]).stdout.strip()


def body(timeout=2.0):
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return rest.decode(errors="replace") if head.startswith(b"HTTP/1.") and b" 200 " in head[:16] else None
    except OSError:
        return None


def wait_for(what, cond, timeout, interval=0.005):
    """Polls cond() until true; returns the time it became true, raises after timeout."""
    deadline = now() + timeout
    while True:
        if cond():
            return now()
        if now() > deadline:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)  # poll interval, not a wait for an event


def haproxy_pids():
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/comm" % name) as f:
                    if f.read().strip() == "haproxy":
                        with open("/proc/%s/stat" % name) as g:
                            if g.read().rsplit(")", 1)[1].split()[0] != "Z":
                                out.append(int(name))
            except OSError:
                pass
    return out


def write_cfg(template, tag):
    tmp = CFG + ".tmp"
    with open(tmp, "w") as f:
        f.write(template.replace("@TAG@", tag))
    os.rename(tmp, CFG)


def exe_of(pid):
    try:
        return os.readlink("/proc/%s/exe" % pid)
    except OSError:
        return "(none)"


WAIT_LINE = "ExecReload=/usr/sbin/haproxy-systemd-wrapper --wait-reload $MAINPID"


def reload_lines(dropin_text):
    """The drop-in's ExecReload= lines (without the empty reset), and the same without the check."""
    lines = [l.strip() for l in dropin_text.splitlines() if l.strip().startswith("ExecReload=")]
    lines = [l for l in lines if l != "ExecReload="]
    return lines, [l for l in lines if not re.search(r"haproxy\S*\s.*\s-c(\s|$)", l)]


def variant_lines(variant, lines, nocheck, has_wait):
    """The ExecReload= lines of a wrapper variant's override, or None for the drop-in as shipped."""
    base = nocheck if variant.endswith("nocheck") else lines
    if variant.startswith("wrapper-wait"):
        return base + ([] if has_wait else [WAIT_LINE])
    return base if variant == "wrapper-nocheck" else None


class Variants:
    """How each variant's unit is made (see the module docstring)."""

    def __init__(self, dropin):
        self.dropin = dropin
        self.mask = os.path.join(DROPIN_DIR, os.path.basename(dropin))
        with open(dropin) as f:
            text = f.read()
        all_lines = [l.strip() for l in text.splitlines()]
        self.reload_lines, self.nocheck_lines = reload_lines(text)
        # The drop-in's sandboxing lines, for dist-hardened (the distribution's unit with them).
        self.hardening = [l for l in all_lines if re.match(r"(Protect|Restrict|LockPersonality|SystemCall|NoNewPrivileges|Private)\w*=", l)]
        self.has_check = len(self.nocheck_lines) < len(self.reload_lines)
        self.has_wait = any("--wait-reload" in l for l in self.reload_lines)
        help_text = run(["/usr/sbin/haproxy-systemd-wrapper", "--help"], check=False)
        self.can_wait = "--wait-reload" in help_text.stdout + help_text.stderr

    def skip(self, variant):
        """Why a variant does not apply to this package (None: it does)."""
        if variant.startswith("wrapper-wait"):
            if self.has_wait:
                return "the drop-in already ends with --wait-reload (measured as wrapper and wrapper-nocheck)"
            if not self.can_wait:
                return "this wrapper has no --wait-reload"
        if variant.endswith("nocheck") and not self.has_check:
            return "the drop-in has no configuration check in ExecReload="
        if variant == "dist-hardened" and not self.hardening:
            return "the drop-in has no sandboxing lines"
        return None

    def lines(self, variant):
        return variant_lines(variant, self.reload_lines, self.nocheck_lines, self.has_wait)

    def setup(self, variant):
        os.makedirs(DROPIN_DIR, exist_ok=True)
        for p in (self.mask, NOCHECK):
            if os.path.lexists(p):
                os.unlink(p)
        if variant in ("dist", "dist-hardened"):
            os.symlink("/dev/null", self.mask)
            if variant == "dist-hardened":
                with open(NOCHECK, "w") as f:
                    f.write("# reload-bench: the distribution's unit with the drop-in's sandboxing\n[Service]\n%s\n"
                            % "\n".join(self.hardening))
        elif variant in ("wrapper", "wrapper-nocheck", "wrapper-wait", "wrapper-wait-nocheck"):
            lines = self.lines(variant)
            if lines is not None:
                with open(NOCHECK, "w") as f:
                    f.write("# reload-bench: the drop-in's ExecReload= for variant %s\n[Service]\n"
                            "ExecReload=\n%s\n" % (variant, "\n".join(lines)))
        else:
            raise ValueError(variant)
        run(["systemctl", "daemon-reload"])
        # Short runs restart more often than systemd's start limit (5 in 10 s) allows.
        run(["systemctl", "reset-failed", "haproxy"], check=False)
        t0 = now()
        run(["timeout", "300", "systemctl", "restart", "haproxy"], timeout=310)
        start = now() - t0
        main = prop("MainPID")
        exe = exe_of(main)
        want = "/usr/sbin/haproxy" if variant.startswith("dist") else "/usr/sbin/haproxy-systemd-wrapper"
        if exe != want:
            raise RuntimeError("%s: MainPID %s runs %s, want %s" % (variant, main, exe, want))
        reload_prop = prop("ExecReload")
        has_check = " -c " in reload_prop
        if has_check != (variant.startswith("dist") or (not variant.endswith("nocheck") and self.has_check)):
            raise RuntimeError("%s: ExecReload has the check: %s (%s)" % (variant, has_check, reload_prop))
        wait_for("the service to serve after restart", lambda: body() is not None, 120)
        wait_for("one master and one worker", lambda: len(haproxy_pids()) == 2, 120)
        return start, reload_prop


def one_reload(template, tag):
    write_cfg(template, tag)
    t0 = now()
    p = subprocess.run(["timeout", "120", "systemctl", "reload", "haproxy"], capture_output=True, text=True, timeout=130)
    t1 = now()
    first = body()
    sync = first == tag
    t2 = t1 if sync else wait_for("tag %s to serve" % tag, lambda: body() == tag, 60)
    t3 = wait_for("the old generation to go", lambda: len(haproxy_pids()) == 2, 60)
    return {"tag": tag, "rc": p.returncode, "err": (p.stdout + p.stderr).strip()[-500:], "wall": t1 - t0,
            "served": t2 - t0, "settled": t3 - t0, "sync": sync}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def trace_phase(template, variants, n, result):
    """The wrapper variant under the host's ftrace: the host maps our pids to its own."""
    start, _ = variants.setup("wrapper")
    wrapper = int(prop("MainPID"))
    masters = [p for p in haproxy_pids() if open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()[1] == str(wrapper)]
    if len(masters) != 1:
        raise RuntimeError("trace: expected one master under the wrapper, found %r" % masters)
    with open(OUT + "/trace-request.tmp", "w") as f:
        json.dump({"wrapper": wrapper, "master": masters[0]}, f)
    os.rename(OUT + "/trace-request.tmp", OUT + "/trace-request")
    try:
        wait_for("the host's trace-on", lambda: os.path.exists(OUT + "/trace-on"), 60, 0.05)
        traced = True
    except RuntimeError as e:
        log("trace: %s; reloading without the host's trace" % e)
        traced = False
    reloads = []
    for i in range(n):
        reloads.append(one_reload(template, "trace-%d" % i))
    open(OUT + "/trace-off", "w").close()
    if traced:
        try:
            wait_for("the host's trace-done", lambda: os.path.exists(OUT + "/trace-done"), 120, 0.05)
        except RuntimeError as e:
            log("trace: %s" % e)
    result["trace"] = {"traced": traced, "wrapper": wrapper, "master": masters[0], "reloads": reloads,
                       "load": loadavg()}


def main():
    with open(B + "/settings.json") as f:
        st = json.load(f)
    result = {"settings": st, "runs": [], "errors": []}
    try:
        debs = sorted(os.path.join(B, "deb", d) for d in os.listdir(B + "/deb") if d.endswith(".deb"))
        run(["env", "DEBIAN_FRONTEND=noninteractive", "timeout", "300", "apt-get", "install", "-y",
             "--no-install-recommends"] + debs, timeout=310)
        files = run(["dpkg", "-L", "haproxy-systemd-wrapper"]).stdout.split()
        dropins = [f for f in files if re.search(r"/haproxy\.service\.d/[^/]+\.conf$", f)]
        if len(dropins) != 1:
            raise RuntimeError("expected one drop-in in the package, found %r" % dropins)
        variants = Variants(dropins[0])
        result["versions"] = {
            "haproxy": run(["haproxy", "-v"]).stdout.splitlines()[0],
            "systemd": run(["systemctl", "--version"]).stdout.splitlines()[0],
            "wrapper": run(["dpkg-query", "-W", "-f", "${Version}", "haproxy-systemd-wrapper"]).stdout,
            "os": open("/etc/debian_version").read().strip(),
            "dropin_reload": variants.reload_lines,
            "variant_reload": {v: variants.lines(v) for v in st["variants"] if not v.startswith("dist") and not variants.skip(v)},
            "hardening": variants.hardening,
        }
        result["skipped"] = {v: variants.skip(v) for v in st["variants"] if variants.skip(v)}
        for v, why in result["skipped"].items():
            log("variant %s skipped: %s" % (v, why))
        if os.path.exists(CERTS):
            shutil.rmtree(CERTS)
        shutil.copytree(B + "/certs", CERTS)
        with open(B + "/haproxy.cfg.in") as f:
            template = f.read()
        write_cfg(template, "initial")
        run(["haproxy", "-c", "-q", "-f", CFG], timeout=120)
        checks = []
        for _ in range(5):
            t0 = now()
            run(["haproxy", "-Ws", "-c", "-f", CFG], timeout=120)
            checks.append(now() - t0)
        result["check_alone"] = checks
        log("haproxy -c alone: %s ms" % " ".join("%.0f" % (c * 1000) for c in checks))
        kinds = [v for v in st["variants"] if v not in result["skipped"]]
        for rnd in range(st["rounds"]):
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
            for variant in order:
                r = {"variant": variant, "round": rnd, "load_before": loadavg()}
                try:
                    r["start"], r["exec_reload"] = variants.setup(variant)
                    r["reloads"] = [one_reload(template, "r%d-%s-%d" % (rnd, variant, i)) for i in range(st["reloads"])]
                    r["status"] = prop("StatusText")
                except Exception as e:  # noqa: BLE001 - recorded, the bench goes on with the next run
                    r["error"] = "%s: %s" % (type(e).__name__, e)
                    log("run %s round %d failed: %s" % (variant, rnd, r["error"]))
                r["load_after"] = loadavg()
                result["runs"].append(r)
                meds = sorted(x["wall"] for x in r.get("reloads", []))
                log("round %d %s: start %.2f s, reload wall median %s, load %s" % (
                    rnd, variant, r.get("start", 0), "%.0f ms" % (meds[len(meds) // 2] * 1000) if meds else "-",
                    r["load_after"]))
        if st.get("trace_reloads"):
            try:
                trace_phase(template, variants, st["trace_reloads"], result)
            except Exception as e:  # noqa: BLE001
                result["errors"].append("trace phase: %s: %s" % (type(e).__name__, e))
                log("trace phase failed: %s" % e)
        run(["timeout", "120", "systemctl", "stop", "haproxy"], timeout=130, check=False)
    except Exception as e:  # noqa: BLE001
        result["errors"].append("%s: %s" % (type(e).__name__, e))
        log("FAILED: %s" % e)
    with open(OUT + "/result.json.tmp", "w") as f:
        json.dump(result, f)
    os.rename(OUT + "/result.json.tmp", OUT + "/result.json")
    subprocess.run("journalctl -b --no-pager > %s/journal.txt 2>&1" % OUT, shell=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
