#!/usr/bin/env python3
"""Bounded load loop for the end-to-end flows: new-connection HTTP requests against one address.

    load.py HOST PORT DIR [MAX_SECONDS]

Writes DIR/ready after the first successful request, stops when DIR/stop appears (or after
MAX_SECONDS, default 300, so it can never outlive a hung test), then writes DIR/result as
"ok=N failed=M" and, for each failure, a line in DIR/failures. Every request opens a new TCP
connection (Connection: close), so each one exercises the listeners being handed over by a reload.
"""
import http.client
import os
import sys
import time


def main():
    host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    max_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 300.0
    deadline = time.monotonic() + max_seconds
    stop = os.path.join(out, "stop")
    ok = failed = 0
    failures = []
    ready = False
    while not os.path.exists(stop) and time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                ok += 1
                if not ready:
                    open(os.path.join(out, "ready"), "w").close()
                    ready = True
                continue
            error = "status %d" % resp.status
        except Exception as e:  # any failure to connect, send or read counts
            error = "%s: %s" % (type(e).__name__, e)
        # Failures before the first success are the caller's "not serving yet", not reload failures.
        if ready:
            failed += 1
            failures.append("%.3f %s" % (time.monotonic(), error))
    with open(os.path.join(out, "failures"), "w") as f:
        f.write("".join(line + "\n" for line in failures[:50]))
    tmp = os.path.join(out, "result.tmp")
    with open(tmp, "w") as f:
        f.write("ok=%d failed=%d timed_out=%d\n" % (ok, failed, 0 if os.path.exists(stop) else 1))
    os.rename(tmp, os.path.join(out, "result"))


if __name__ == "__main__":
    main()
