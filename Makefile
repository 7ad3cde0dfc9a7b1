# haproxy-systemd-wrapper
# `make test` runs the whole suite (needs root: it installs its Debian test dependencies and boots
# systemd containers). Each section below belongs to one area; keep edits inside your section.

PREFIX  ?= /usr/local
DESTDIR ?=
CARGO   ?= cargo
CARGO_FLAGS ?= --locked
BIN     := haproxy-systemd-wrapper

.PHONY: all build test deps test-cargo clean
all: build

## ---- core (build, unit + integration tests) ----
build:
	$(CARGO) build --release $(CARGO_FLAGS)

# Installs the Debian packages the tests need (idempotent; apt-get only when something is missing).
deps:
	tests/install-deps.sh

test-cargo: deps
	$(CARGO) test $(CARGO_FLAGS)

test: test-cargo test-packaging test-e2e

clean:
	$(CARGO) clean
	rm -rf dist

## ---- packaging (install, uninstall, man, deb, rpm, test-packaging) ----

## ---- end-to-end under systemd (test-e2e) ----

## ---- benchmark (bench) ----
# `make bench`: the wrapper (master-worker and foreground) against native `haproxy -Ws`, same config
# and load, on 127.0.0.1; prints a table, the ratios and PASS/MISS per target, refreshes the results in
# BENCHMARKS.md; exits 1 on a miss unless BENCH_ALLOW_MISS=1. No systemd, no root needed (apart from
# installing haproxy/wrk when missing). Quick run: `make bench BENCH_ROUNDS=1 BENCH_RELOADS=10`.
# Settings (environment or make command line): BENCH_ROUNDS BENCH_RELOADS BENCH_KINDS BENCH_WRK_CONNS
# BENCH_WRK_DELAY_MS BENCH_ALLOW_MISS BENCH_RESULTS (file, or - for none); see BENCHMARKS.md.
PYTHON ?= python3
BENCH_VARS := BENCH_ROUNDS BENCH_RELOADS BENCH_KINDS BENCH_WRK_CONNS BENCH_WRK_DELAY_MS \
              BENCH_ALLOW_MISS BENCH_RESULTS BENCH_HAPROXY BENCH_WRK BENCH_WRAPPER
export $(BENCH_VARS)
.PHONY: bench bench-deps
bench-deps:
	@command -v wrk >/dev/null 2>&1 && { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null 2>&1 \
		|| tests/install-deps.sh

bench: build bench-deps
	$(PYTHON) bench/bench.py
