# haproxy-systemd-wrapper
# `make test` runs the whole suite (needs root: it installs its Debian test dependencies and boots
# systemd containers). Each section below belongs to one area; keep edits inside your section.

PREFIX  ?= /usr/local
DESTDIR ?=
CARGO   ?= cargo
CARGO_FLAGS ?= --locked
BIN     := haproxy-systemd-wrapper

.PHONY: all build test deps lint test-cargo cargo-test clean
all: build

## ---- core (build, unit + integration tests) ----
# Debian 12's cargo (1.65) would clone crates.io's whole git index from github.com; the sparse
# protocol (the default from cargo 1.70) only fetches what Cargo.lock names. cargo 1.65 has it
# behind -Z sparse-registry: this enables it for cargo alone (rustc is not affected).
CARGO_MINOR := $(shell $(CARGO) --version 2>/dev/null | sed -n 's/^cargo 1\.\([0-9]*\)\..*/\1/p')
ifneq (,$(CARGO_MINOR))
ifeq (,$(shell [ $(CARGO_MINOR) -lt 68 ] || echo new))
export CARGO_UNSTABLE_SPARSE_REGISTRY = true
export __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS = nightly
endif
endif

build:
	$(CARGO) build --release $(CARGO_FLAGS)

# Installs the Debian packages the tests need (idempotent; apt-get only when something is missing).
deps:
	tests/install-deps.sh

# Unit tests and the integration tests (fake and real haproxy); `cargo-test` without installing anything
# (the package builds run it, unprivileged: the tests that mount are #[ignore]d there and run here).
test-cargo: deps
	$(MAKE) lint
	$(MAKE) cargo-test CARGO_TEST_ARGS=--include-ignored

# The gate every change passes: rustfmt (rustfmt.toml) and clippy with warnings as errors.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release $(CARGO_FLAGS) --all-targets -- -D warnings

CARGO_TEST_ARGS ?=
cargo-test:
	$(CARGO) test $(CARGO_FLAGS) -- $(CARGO_TEST_ARGS)

test: test-cargo bench-test test-packaging test-e2e

clean:
	$(CARGO) clean
	rm -rf dist

## ---- packaging (install, uninstall, man, dist, dsc, srpm, deb, rpm, test-packaging) ----
# Source install: `make && sudo make install` puts the binary, the man page and the full unit
# systemd/haproxy.service in place (then `systemctl daemon-reload`). The packages install with
# SYSTEMD_UNIT=dropin instead: a drop-in for the distribution's own haproxy.service.
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
# full (systemd/haproxy.service) or dropin (haproxy.service.d/haproxy-systemd-wrapper.conf)
SYSTEMD_UNIT ?= full
# The drop-in's flavour: debian (Debian's haproxy.service) or fedora (Fedora/RHEL's: also loads the
# configuration directory $CFGDIR, and defaults Debian's EXTRAOPTS, which Fedora's unit does not set).
DROPIN_FLAVOUR ?= debian
RELEASE_BIN ?= target/release/$(BIN)
DROPIN_DIR  := $(UNITDIR)/haproxy.service.d
DROPIN      := $(DROPIN_DIR)/$(BIN).conf
UNIT_SED    := -e 's|/usr/sbin/$(BIN)|$(SBINDIR)/$(BIN)|g'
DROPIN_SED  := $(UNIT_SED)
ifeq ($(DROPIN_FLAVOUR),fedora)
DROPIN_SED  += -e 's|-f \$$CONFIG |-f $$CONFIG -f $$CFGDIR |' -e 's|^Environment=OPTIONS=$$|Environment=OPTIONS= EXTRAOPTS=|'
endif
PKG_BUILD   := target/packaging
VERSION     := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
# The Debian version (upstream version and Debian revision) from debian/changelog's first line.
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DIST_SRC    := dist/$(BIN)-$(VERSION).tar.gz
DIST_VENDOR := dist/$(BIN)-$(VERSION)-vendor.tar.xz
DSC         := dist/$(BIN)_$(DEB_VERSION).dsc
RPM_RELEASE := $(shell sed -n 's/^Release: *\([0-9]*\).*/\1/p' rpm/$(BIN).spec)
SRPM        := dist/$(BIN)-$(VERSION)-$(RPM_RELEASE).src.rpm

.PHONY: install uninstall dist dsc srpm deb rpm deb-deps dpkg-tools rpm-tools test-packaging print-rpmbuild-flags

# The built file, not `build`: `sudo make install` after `make` does not compile again as root.
$(RELEASE_BIN): Cargo.toml Cargo.lock $(shell find src -name '*.rs' 2>/dev/null)
	$(CARGO) build --release $(CARGO_FLAGS)

install: $(RELEASE_BIN)
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(SBINDIR)/$(BIN)
	install -D -m 0644 man/$(BIN).8 $(DESTDIR)$(MANDIR)/man8/$(BIN).8
ifeq ($(SYSTEMD_UNIT),dropin)
	install -d -m 0755 $(DESTDIR)$(DROPIN_DIR)
	sed $(DROPIN_SED) systemd/$(BIN).conf > $(DESTDIR)$(DROPIN)
	chmod 0644 $(DESTDIR)$(DROPIN)
else
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed $(UNIT_SED) systemd/haproxy.service > $(DESTDIR)$(UNITDIR)/haproxy.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/haproxy.service
endif

# Removes what `install` installed (either unit flavour); a haproxy.service that is not ours stays.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/$(BIN) $(DESTDIR)$(MANDIR)/man8/$(BIN).8 $(DESTDIR)$(DROPIN)
	-rmdir $(DESTDIR)$(DROPIN_DIR) 2>/dev/null
	if grep -qs '$(BIN)' $(DESTDIR)$(UNITDIR)/haproxy.service; then rm -f $(DESTDIR)$(UNITDIR)/haproxy.service; fi

# Release tarballs in dist/ (packaging/dist.sh; reproducible): the source tree
# haproxy-systemd-wrapper-VERSION.tar.gz, the crates Cargo.lock names as `cargo vendor` lays them
# out, haproxy-systemd-wrapper-VERSION-vendor.tar.xz, and SHA256SUMS. Vendoring is the only step
# that downloads (crates.io), and runs again only when Cargo.lock changes; every build from these
# tarballs (dsc, srpm, deb, rpm) is offline.
dist: $(DIST_VENDOR)
	packaging/dist.sh source $(DIST_SRC)
	packaging/dist.sh sums dist $(notdir $(DIST_SRC) $(DIST_VENDOR))

# cargo downloads over TLS: on a fresh Debian host (no Build-Depends needs them any more) the CA
# certificates are installed first.
$(DIST_VENDOR): Cargo.lock
	@command -v $(CARGO) >/dev/null || { echo "dist: no $(CARGO) (make deb installs Debian's cargo; or apt-get install cargo)" >&2; exit 1; }
	@[ -e /etc/ssl/certs/ca-certificates.crt ] || ! command -v apt-get >/dev/null || { \
	  echo "dist: installing ca-certificates (cargo vendor downloads from crates.io)" >&2; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null; }
	mkdir -p dist
	CARGO=$(CARGO) packaging/dist.sh vendor $@

# dpkg-source and dpkg-parsechangelog (dsc), rpmbuild (srpm, rpm): installed when missing
dpkg-tools:
	@dpkg-query -W -f='$${Status}\n' dpkg-dev 2>/dev/null | grep -q 'install ok installed' || { \
	  echo "installing dpkg-dev" >&2; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null; }
# (elfutils: eu-strip, which find-debuginfo runs for the -debuginfo package.)
rpm-tools:
	@command -v rpmbuild >/dev/null && command -v eu-strip >/dev/null || { echo "installing rpm elfutils" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpm elfutils >/dev/null; }

# Debian source package, 3.0 (quilt): .dsc, .orig.tar.gz (= the source tarball), .orig-vendor.tar.xz
# (= the vendored crates, unpacked into vendor/) and .debian.tar.xz, in dist/ (packaging/dsc.sh).
dsc: dpkg-tools dist
	packaging/dsc.sh

# The packaging tools (dpkg-dev, devscripts, equivs, build-essential) and the Build-Depends of
# debian/control, installed when missing (mk-build-deps: Debian's cargo and rustc among them).
deb-deps:
	@missing=$$(for p in dpkg-dev devscripts equivs build-essential; do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "deb: installing" $$missing >&2; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	@dpkg-checkbuilddeps 2>/dev/null || { echo "deb: installing the Build-Depends of debian/control" >&2; \
	  rm -rf $(PKG_BUILD)/build-deps && mkdir -p $(PKG_BUILD)/build-deps && apt-get update -qq && \
	  cd $(PKG_BUILD)/build-deps && DEBIAN_FRONTEND=noninteractive mk-build-deps -i -r \
	  -t 'apt-get -y -qq --no-install-recommends' $(CURDIR)/debian/control >/dev/null; }

# Builds the .deb from the source package, as a distribution would: `dpkg-source -x` of the .dsc in
# target/packaging/deb, `dpkg-buildpackage -us -uc -b` there (offline: debian/rules points cargo at
# vendor/). The .deb goes to dist/; the -dbgsym .deb, .buildinfo and .changes stay there.
# On a fresh host the first `make dist` (here) downloads the crates once.
deb: deb-deps
	$(MAKE) dsc
	rm -rf $(PKG_BUILD)/deb && mkdir -p $(PKG_BUILD)/deb
	cd $(PKG_BUILD)/deb && dpkg-source -x $(CURDIR)/$(DSC) $(BIN)-$(VERSION) >/dev/null
	cd $(PKG_BUILD)/deb/$(BIN)-$(VERSION) && dpkg-buildpackage -us -uc -b
	mkdir -p dist && rm -f dist/$(BIN)_*.deb
	cp $(PKG_BUILD)/deb/$(BIN)_$(DEB_VERSION)_*.deb dist/

# rpmbuild on this Debian host as well as on Fedora/RHEL: rpm/fallback.macros (%_unitdir,
# %systemd_requires) is loaded only when rpm does not define them (no systemd-rpm-macros), and
# --nodeps only when rpm's own database does not know rpm (a Debian host: BuildRequires name
# Fedora packages). fallback.macros also makes the -debuginfo package as Fedora's redhat-rpm-config
# does. DEB_BUILD_OPTIONS=nocheck skips %check too.
RPM_ON_DEBIAN := $(if $(shell rpm -q rpm >/dev/null 2>&1 && echo known),,yes)
RPMBUILD_FLAGS ?= $(if $(shell rpm --eval '%{?_unitdir}' 2>/dev/null),,--load=$(CURDIR)/rpm/fallback.macros) \
                  $(if $(RPM_ON_DEBIAN),--nodeps) \
                  $(if $(filter nocheck,$(DEB_BUILD_OPTIONS)),--nocheck)

# Source RPM: rpm/haproxy-systemd-wrapper.spec with Source0 (the source tarball) and Source1 (the
# vendored crates) from dist/; the .src.rpm goes to dist/.
srpm: rpm-tools dist
	rm -rf $(PKG_BUILD)/srpm && mkdir -p $(PKG_BUILD)/srpm/SOURCES
	cp $(DIST_SRC) $(DIST_VENDOR) $(PKG_BUILD)/srpm/SOURCES/
	rpmbuild -bs $(RPMBUILD_FLAGS) --define '_topdir $(CURDIR)/$(PKG_BUILD)/srpm' rpm/$(BIN).spec >/dev/null
	mkdir -p dist && rm -f dist/$(BIN)-*.src.rpm
	cp $(PKG_BUILD)/srpm/SRPMS/$(BIN)-$(VERSION)-$(RPM_RELEASE)*.src.rpm dist/

# Builds the .rpm from the source RPM (rpmbuild --rebuild, offline) in target/packaging/rpm; the
# .rpm goes to dist/ (the -debuginfo/-debugsource .rpm stay there).
rpm: srpm
	rm -rf $(PKG_BUILD)/rpm && mkdir -p $(PKG_BUILD)/rpm
	rpmbuild --rebuild $(RPMBUILD_FLAGS) --define '_topdir $(CURDIR)/$(PKG_BUILD)/rpm' $(SRPM)
	rm -f $(filter-out %.src.rpm,$(wildcard dist/$(BIN)-*.rpm))
	cp $(PKG_BUILD)/rpm/RPMS/*/$(BIN)-$(VERSION)-*.rpm dist/

# Checks the source packages and what the packages ship (needs root: it installs tools it lacks,
# builds the .dsc in a fresh Debian 12 chroot and the .src.rpm, both without network, and compares).
# Ends with "N passed, M failed".
test-packaging: deb rpm
	tests/packaging/run.sh

# For tests/packaging/run.sh: the flags `make rpm` gives rpmbuild.
print-rpmbuild-flags:
	@echo $(RPMBUILD_FLAGS)


## ---- end-to-end under systemd (test-e2e) ----
# Boots Debian 12, 13 and sid guests (systemd-nspawn, roots cached under /var/cache/haproxy-systemd-wrapper-e2e,
# built with mmdebstrap when missing) and runs the user's flows against dist/'s .deb inside them; see
# docs/e2e.md. Needs root. Ends with "N passed, M failed", plus "(PARTIAL: …)" when a setting left
# something out. Settings (environment): E2E_SUITES ("bookworm trixie sid"), E2E_FLOWS (e.g. "1 2 5"),
# E2E_TIMEOUT (s per guest), E2E_KEEP=1, E2E_CACHE.
E2E_ALL_SUITES := bookworm trixie sid
E2E_SUITES ?= $(E2E_ALL_SUITES)
# `make test` (CI) runs every guest and every flow, whatever E2E_SUITES / E2E_FLOWS say in the
# environment or on the command line: a count that covers less must not read like the whole suite.
test: override E2E_SUITES := $(E2E_ALL_SUITES)
test: override export E2E_FLOWS :=
.PHONY: test-e2e
test-e2e: deb
	@command -v systemd-nspawn >/dev/null && command -v mmdebstrap >/dev/null || tests/install-deps.sh
	tests/e2e/run.sh $(E2E_SUITES)

## ---- benchmark (bench) ----
# `make bench` runs three parts (BENCH_PARTS, default "local systemd refusals"); exits 1 when a target
# of any is missed unless BENCH_ALLOW_MISS=1. Each refreshes its results section of BENCHMARKS.md.
#  - local (`make bench-local`): the wrapper (master-worker and foreground) against native
#    `haproxy -Ws`, same config and load, on 127.0.0.1; no systemd, no root (apart from installing
#    haproxy/wrk when missing). Quick run: `make bench-local BENCH_ROUNDS=1 BENCH_RELOADS=10`.
#  - systemd (`make bench-systemd`, root): `systemctl reload haproxy` on a large configuration in a
#    Debian 13 guest (systemd-nspawn, like test-e2e), the distribution's unit against the .deb's drop-in,
#    with and without its configuration check; builds the .deb (make deb). Quick run:
#    `make bench-systemd BENCH_SD_ROUNDS=1 BENCH_SD_RELOADS=3`.
#  - refusals (`make bench-refusals`, root): refused connections and the longest delay a client saw
#    (a new connection every 10 ms) through reloads, crashes, restarts and an upgrade, Debian's unit
#    against the drop-in in both modes, in the Debian 12, 13 and sid guests in turn; builds the .deb.
#    Quick run: `make bench-refusals BENCH_RF_RUNS=1 BENCH_RF_SUITE=trixie`.
# Settings (environment or make command line): see BENCHMARKS.md.
# `make soak` (not part of `make test`): 1000 reloads in each wrapper mode under load; see BENCHMARKS.md.
PYTHON ?= python3
BENCH_VARS := BENCH_ROUNDS BENCH_RELOADS BENCH_KINDS BENCH_WRK_CONNS BENCH_WRK_DELAY_MS \
              BENCH_ALLOW_MISS BENCH_RESULTS BENCH_JSON BENCH_HAPROXY BENCH_WRK BENCH_WRAPPER \
              BENCH_SD_ROUNDS BENCH_SD_RELOADS BENCH_SD_VARIANTS BENCH_SD_BACKENDS BENCH_SD_SERVERS \
              BENCH_SD_CERTS BENCH_SD_TRACE BENCH_SD_SUITE BENCH_SD_DEB BENCH_SD_KEEP BENCH_CERT_CACHE \
              BENCH_RF_RUNS BENCH_RF_SUITE BENCH_RF_DEB BENCH_RF_KEEP \
              SOAK_RELOADS SOAK_EVERY SOAK_KINDS
export $(BENCH_VARS)
BENCH_PARTS ?= local systemd refusals
.PHONY: bench bench-local bench-systemd bench-refusals bench-deps bench-sd-deps bench-test bench-trace soak
bench-deps:
	@command -v wrk >/dev/null 2>&1 && { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null 2>&1 \
		|| tests/install-deps.sh

bench-sd-deps:
	@for t in systemd-nspawn mmdebstrap openssl; do command -v $$t >/dev/null || { tests/install-deps.sh; break; }; done

# The bench's own unit tests (parsers, statistics, process tree; no haproxy needed).
bench-test:
	$(PYTHON) bench/test_bench.py

# The release build only when a wrapper kind runs (BENCH_KINDS=native works with the wrapper broken).
bench_comma := ,
bench_build := $(if $(BENCH_KINDS),$(if $(filter wrapper-%,$(subst $(bench_comma), ,$(BENCH_KINDS))),build),build)
bench_prereqs := bench-test $(if $(filter local,$(BENCH_PARTS)),$(bench_build) bench-deps) \
                 $(if $(filter systemd refusals,$(BENCH_PARTS)),deb bench-sd-deps)
bench: $(bench_prereqs)
	@rc=0; \
	$(if $(filter local,$(BENCH_PARTS)),$(PYTHON) bench/bench.py || rc=1;) \
	$(if $(filter systemd,$(BENCH_PARTS)),$(PYTHON) bench/systemd_bench.py || rc=1;) \
	$(if $(filter refusals,$(BENCH_PARTS)),$(PYTHON) bench/refusal_bench.py || rc=1;) \
	exit $$rc

bench-local: $(bench_build) bench-deps bench-test
	$(PYTHON) bench/bench.py

bench-systemd: deb bench-sd-deps bench-test
	$(PYTHON) bench/systemd_bench.py

bench-refusals: deb bench-sd-deps bench-test
	$(PYTHON) bench/refusal_bench.py

soak: build bench-deps bench-test
	$(PYTHON) bench/soak.py

# Diagnostic (root: ftrace): what the wrapper puts in front of the master's reload, per reload.
bench-trace: build bench-deps
	$(PYTHON) bench/trace_handoff.py $(BENCH_RELOADS)
