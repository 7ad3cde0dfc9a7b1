#!/usr/bin/env python3
"""Bounded load loop for the end-to-end flows: new-connection HTTP requests against one address.

    load.py HOST PORT DIR [MAX_SECONDS [BODY]]

Writes DIR/ready after the first successful request, stops when DIR/stop appears (or after
MAX_SECONDS, default 300, so it can never outlive a hung test), then writes DIR/result as
"ok=N failed=M timed_out=0|1 during=K outside=O span_ms=S" (S: from the first failure to the last,
the length of an outage) and, for the first 50 failures, a line each in DIR/failures. Every request
opens a new TCP connection (Connection: close), so each one exercises the listeners being handed
over by a reload. With BODY, a 200 answer with another body counts as a failure too.
DIR/window, when the caller wrote it before DIR/stop ("START END", seconds since the epoch), bounds
the interval whose successful requests "during" counts (0 without it): proof that the loop was
probing while the thing under test (a reload) ran; "outside" counts the failures outside it (all of
them without it).
"""
import http.client
import os
import sys
import time


def main():
    host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    max_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 300.0
    want_body = sys.argv[5].encode() if len(sys.argv) > 5 else None
    deadline = time.monotonic() + max_seconds
    stop = os.path.join(out, "stop")
    ok = failed = 0
    failures = []
    ok_times = []  # wall-clock end of each successful request, for DIR/window
    first_fail = last_fail = None
    fail_times = []
    ready = False
    while not os.path.exists(stop) and time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status == 200 and (want_body is None or body == want_body):
                ok += 1
                ok_times.append(time.time())
                if not ready:
                    open(os.path.join(out, "ready"), "w").close()
                    ready = True
                continue
            error = "status %d, body %r" % (resp.status, body[:80])
        except Exception as e:  # any failure to connect, send or read counts
            error = "%s: %s" % (type(e).__name__, e)
        # Failures before the first success are the caller's "not serving yet", not reload failures.
        if ready:
            failed += 1
            last_fail = time.time()
            first_fail = first_fail or last_fail
            fail_times.append(last_fail)
            if len(failures) < 50:
                failures.append("%.3f %s" % (last_fail, error))
    during, outside = 0, len(fail_times)
    try:
        with open(os.path.join(out, "window")) as f:
            start, end = (float(x) for x in f.read().split())
        during = sum(1 for t in ok_times if start <= t <= end)
        outside = sum(1 for t in fail_times if not start <= t <= end)
    except FileNotFoundError:
        pass
    with open(os.path.join(out, "failures"), "w") as f:
        f.write("".join(line + "\n" for line in failures))
    tmp = os.path.join(out, "result.tmp")
    with open(tmp, "w") as f:
        f.write("ok=%d failed=%d timed_out=%d during=%d outside=%d span_ms=%d\n"
                % (ok, failed, 0 if os.path.exists(stop) else 1, during, outside,
                   0 if first_fail is None else round((last_fail - first_fail) * 1000)))
    os.rename(tmp, os.path.join(out, "result"))


if __name__ == "__main__":
    main()
