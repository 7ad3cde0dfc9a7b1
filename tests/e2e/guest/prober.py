#!/usr/bin/env python3
"""Connection prober for the never-refuse flows: a new connection every INTERVAL, as clients do.

    prober.py HOST PORT DIR [INTERVAL_MS [TIMEOUT_S [MAX_SECONDS]]]

Every INTERVAL_MS (default 10) it starts one attempt in a thread of its own, whatever the earlier
ones are doing: a new TCP connection (TIMEOUT_S, default 3, for the connect and for the answer),
an HTTP/1.0 GET, the whole answer read. Writes DIR/ready after the first 200 answer and stops
starting attempts when DIR/stop appears (or after MAX_SECONDS, default 120, so it never outlives a
hung test); once every attempt has ended it writes DIR/result:

    ok=N refused=R timed_out=T reset=X other=O max_ms=M started=S

refused: the connection was refused (nothing listened); timed_out: no connection or no answer
within TIMEOUT_S; reset: connected, then reset or closed before any answer (a haproxy killed while
it held the connection); other: any other failure (an answer that is not 200); max_ms: the longest
attempt that was answered (the delay a client saw).
DIR/progress holds the number of answered attempts so far (rewritten as it grows).
DIR/failures lists the first 50 failures, one line each ("EPOCH KIND detail").
"""
import os
import socket
import sys
import threading
import time


def attempt(host, port, timeout, results, lock):
    t0 = time.monotonic()
    kind, detail = "ok", ""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(max(0.001, timeout - (time.monotonic() - t0)))
            s.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        if not data:
            kind, detail = "reset", "closed before any answer"
        elif not data.startswith(b"HTTP/1.") or data.split(b" ", 2)[1:2] != [b"200"]:
            kind, detail = "other", "answer %r" % data[:60]
    except ConnectionRefusedError as e:
        kind, detail = "refused", str(e)
    except (ConnectionResetError, BrokenPipeError) as e:
        kind, detail = "reset", str(e)
    except socket.timeout as e:
        kind, detail = "timed_out", str(e) or "timed out"
    except OSError as e:
        kind, detail = "other", "%s: %s" % (type(e).__name__, e)
    ms = (time.monotonic() - t0) * 1000
    with lock:
        results[kind] += 1
        if kind == "ok":
            results["max_ms"] = max(results["max_ms"], ms)
        elif len(results["failures"]) < 50:
            results["failures"].append("%.3f %s %s" % (time.time(), kind, detail))


def main():
    host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = (float(sys.argv[4]) if len(sys.argv) > 4 else 10.0) / 1000
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0
    max_seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 120.0
    stop = os.path.join(out, "stop")
    results = {"ok": 0, "refused": 0, "timed_out": 0, "reset": 0, "other": 0, "max_ms": 0.0, "failures": []}
    lock = threading.Lock()
    threads = []
    deadline = time.monotonic() + max_seconds
    next_t = time.monotonic()
    ready = False
    last_progress = -1
    while not os.path.exists(stop) and time.monotonic() < deadline:
        t = threading.Thread(target=attempt, args=(host, port, timeout, results, lock), daemon=True)
        t.start()
        threads.append(t)
        threads = [t for t in threads if t.is_alive()]
        if not ready:
            with lock:
                ready = results["ok"] > 0
            if ready:
                open(os.path.join(out, "ready"), "w").close()
        with lock:
            ok = results["ok"]
        if ok != last_progress:
            last_progress = ok
            with open(os.path.join(out, "progress.tmp"), "w") as f:
                f.write("%d\n" % ok)
            os.rename(os.path.join(out, "progress.tmp"), os.path.join(out, "progress"))
        next_t += interval
        time.sleep(max(0.0, next_t - time.monotonic()))
    for t in threads:
        t.join(timeout + 1)
    with open(os.path.join(out, "failures"), "w") as f:
        f.write("".join(line + "\n" for line in results["failures"]))
    started = sum(results[k] for k in ("ok", "refused", "timed_out", "reset", "other"))
    tmp = os.path.join(out, "result.tmp")
    with open(tmp, "w") as f:
        f.write("ok=%d refused=%d timed_out=%d reset=%d other=%d max_ms=%d started=%d\n" % (
            results["ok"], results["refused"], results["timed_out"], results["reset"], results["other"],
            round(results["max_ms"]), started))
    os.rename(tmp, os.path.join(out, "result"))


if __name__ == "__main__":
    main()
