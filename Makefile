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
