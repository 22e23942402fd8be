# Build, test and conformance entry points for wsreactor (GNU make).
#
#   make run [ARGS="--listen 127.0.0.1:9998 --path /echo"]   server on ws://127.0.0.1:9998/echo
#   make run-tls [ARGS=...]                               the same on wss:// (self-signed certificate)
#   make run ARGS="--threads 2"                           two loops on the port (0 = one per core)
#   make test                                             cargo test (unit, integration, doc tests; the cluster
#                                                         tests against a real redis-server), then test-interop
#   make lint                                             rustfmt check + clippy -D warnings + rustdoc -D warnings
#   make venv                                             .venv with kosoku (the conformance suite)
#   make conformance [CONFORMANCE_ARGS="--cases '6.*'"]   kosoku cases 1-10, then 12-13 with --deflate
#   make conformance-tls                                  cases 1-10 over wss:// (through a TLS forwarder)
#   make clean

CARGO   ?= cargo
PYTHON  ?= python3
VENV    := .venv
ARGS    ?=
CONFORMANCE_ARGS ?=
# The binary's own dependencies (logger, signal handling) are behind the `cli`
# feature, so that the library's users do not compile them; `cluster` (the Redis
# bridge, the redis crate) gives the binary its --redis flag, and `tls` (rustls, ring)
# --tls-cert/--tls-key; `make test` and `make lint` cover both (the cluster tests need
# Debian's redis-server: see redis-server below).
FEATURES ?= --features cli,cluster,tls
CARGO_TARGET_DIR_RELEASE := $(or $(CARGO_TARGET_DIR),target)/release
# Pinned so that a new kosoku release can't change verdicts under us; bumping
# it changes the stamp name below, so the next `make venv` reinstalls.
KOSOKU_VERSION ?= 0.1.0
KOSOKU_STAMP   := $(VENV)/.kosoku-$(KOSOKU_VERSION).stamp

.PHONY: run test lint venv conformance conformance-deflate clean

run:
	$(CARGO) run --release $(FEATURES) -- $(ARGS)

# wss:// and https:// with a throwaway self-signed certificate for localhost and
# 127.0.0.1 (made once with openssl, in target/tls/; delete it for a new one).
TLS_DIR ?= $(or $(CARGO_TARGET_DIR),target)/tls
.PHONY: run-tls
run-tls: openssl
	@mkdir -p $(TLS_DIR)
	@test -f $(TLS_DIR)/cert.pem || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
	  -nodes -days 30 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(TLS_DIR)/key.pem -out $(TLS_DIR)/cert.pem 2>/dev/null
	@echo "Self-signed certificate: $(TLS_DIR)/cert.pem. To trust it: open https://127.0.0.1:9998/"
	@echo "and accept the warning (Chromium: type thisisunsafe), or add it to your trust store"
	@echo "(Debian: sudo cp $(TLS_DIR)/cert.pem /usr/local/share/ca-certificates/wsreactor.crt"
	@echo " && sudo update-ca-certificates; curl --cacert $(TLS_DIR)/cert.pem https://127.0.0.1:9998/)."
	$(CARGO) run --release $(FEATURES) -- --tls-cert $(TLS_DIR)/cert.pem --tls-key $(TLS_DIR)/key.pem $(ARGS)

# With redis-server installed, the cluster tests must run: they skip only where it
# cannot be had (WSREACTOR_REQUIRE_REDIS unset).
test: redis-server
	if command -v redis-server >/dev/null; then export WSREACTOR_REQUIRE_REDIS=1; fi; \
	  $(CARGO) test $(FEATURES)
	$(MAKE) test-interop

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets $(FEATURES) -- -D warnings
	# The library alone, as an embedder builds it (no features; then with the cluster).
	$(CARGO) clippy --lib -- -D warnings
	$(CARGO) clippy --lib --features cluster -- -D warnings
	# The API docs: a broken intra-doc link is a broken page for embedders.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features tls,signals,cluster
	# And the internals' docs, which the next reader of the code goes by.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items --features tls,signals,cluster

# The cluster tests start Debian's redis-server (7): install it when missing and we
# can (root with apt), as python3-venv below; otherwise say so and go on (the
# cluster tests then skip, saying why).
.PHONY: redis-server
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "redis-server is missing: installing it (for the cluster tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
	      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; }; \
	  else \
	    echo "redis-server is missing: the cluster tests will skip (sudo apt-get install redis-server)"; \
	  fi; }

# The TLS interop tests make their test CA with the openssl command (and make run-tls
# its certificate): install it when missing and we can.
.PHONY: openssl
openssl:
	@command -v openssl >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "openssl is missing: installing it (for the TLS tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl \
	      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl; }; \
	  else \
	    echo "openssl is missing: the TLS interop tests will skip (sudo apt-get install openssl)"; \
	  fi; }

# bin/pip is the target rather than the directory: a `python3 -m venv` that
# dies in ensurepip (Debian without python3-venv) leaves a venv without pip,
# so we remove it to let the next run retry instead of trusting a broken one.
$(VENV)/bin/pip:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(MAKE) --no-print-directory python3-venv && $(PYTHON) -m venv $(VENV); } \
	  || { rm -rf $(VENV); exit 1; }

# Debian's python3 cannot make venvs until python3-venv is installed: do it when we
# can (root with apt), so that `make test` is all a fresh machine needs.
.PHONY: python3-venv
python3-venv:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; }; \
	else \
	  echo "python3 -m venv failed: install python3-venv (e.g. sudo apt-get install python3-venv)"; exit 1; \
	fi

$(KOSOKU_STAMP): | $(VENV)/bin/pip
	$(VENV)/bin/pip install --disable-pip-version-check --quiet 'kosoku==$(KOSOKU_VERSION)'
	touch $@

venv: $(KOSOKU_STAMP)

# The script starts the server on a free loopback port, runs kosoku, always
# stops that server (by PID) and fails unless every case is OK/INFORMATIONAL.
conformance: venv
	$(CARGO) build --release $(FEATURES)
	$(VENV)/bin/python scripts/conformance.py $(CONFORMANCE_ARGS)
	$(MAKE) conformance-deflate

# Sections 12 and 13 (permessage-deflate) against the server run with --deflate.
# --deflate-threshold 0 compresses every echo: kosoku 0.1.0's 12.x/13.x cases
# crash hashing an echo that comes back uncompressed (a str, "Strings must be
# encoded before hashing") although RFC 7692 lets a server send any message
# uncompressed; so every echo is compressed for this run. They are throughput
# cases, safe to run two at a time (~4-7 min).
conformance-deflate: venv
	$(CARGO) build --release $(FEATURES)
	$(VENV)/bin/python scripts/conformance.py --outdir target/conformance-deflate -p 2 \
	    -i '12.*' -i '13.*' \
	    --server-cmd "$(CARGO_TARGET_DIR_RELEASE)/wsreactor --listen 127.0.0.1:{port} --path {path} --deflate --deflate-threshold 0"

# The same cases over wss://: kosoku 0.1.0 speaks only ws://, so scripts/tls_forward.py
# starts the server with TLS (a throwaway certificate) and forwards kosoku's plain
# connections to it over TLS.
.PHONY: conformance-tls
conformance-tls: venv
	$(CARGO) build --release $(FEATURES)
	$(VENV)/bin/python scripts/conformance.py --outdir target/conformance-tls $(CONFORMANCE_ARGS) \
	    --server-cmd "$(PYTHON) scripts/tls_forward.py --listen {port} --binary $(CARGO_TARGET_DIR_RELEASE)/wsreactor -- --path {path}"

clean:
	$(CARGO) clean
	rm -rf $(VENV)

# Fuzzing: cargo-fuzz (libFuzzer) on the nightly toolchain; fuzz/ is its own workspace
# and fuzz/README.md describes the targets and their input formats.
#
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="frames utf8"]   each target FUZZ_SECONDS, fails on any crash
#   make fuzz-smoke                                           10 s per target, for CI
#
# The checked-in seeds (fuzz/corpus/TARGET) are passed as a second, read-only corpus
# directory; libFuzzer writes what it discovers only to the first, the scratch one,
# so the repo stays clean while coverage accumulates across runs. Crash reproducers
# land in fuzz/artifacts/TARGET/.
FUZZ_SECONDS    ?= 60
FUZZ_TARGETS    ?= handshake frames frames_split_equivalence utf8 deflate_encoder
FUZZ_TOOLCHAIN  ?= nightly
# Overflow checks on; no sanitizer: the crate has no `unsafe`, and ASan cost 3x the
# exec/s here. Use FUZZ_BUILD_ARGS=--debug-assertions for ASan (cargo-fuzz's default).
FUZZ_BUILD_ARGS ?= --debug-assertions --sanitizer none
FUZZ_SCRATCH    ?= fuzz/scratch/corpus
FUZZ_ARGS       ?=

.PHONY: fuzz fuzz-smoke fuzz-tool

fuzz-tool:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@rustup run $(FUZZ_TOOLCHAIN) rustc --version >/dev/null 2>&1 || \
	  { echo "make fuzz needs the $(FUZZ_TOOLCHAIN) toolchain (rustup toolchain install $(FUZZ_TOOLCHAIN))"; exit 1; }

fuzz: fuzz-tool
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_SCRATCH)/$$t || exit 1; \
	  echo "== fuzz $$t: $(FUZZ_SECONDS) s"; \
	  cargo +$(FUZZ_TOOLCHAIN) fuzz run $(FUZZ_BUILD_ARGS) $$t $(FUZZ_SCRATCH)/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 $(FUZZ_ARGS) \
	    || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then \
	  echo "fuzz: FAILED:$$failed (reproducers in fuzz/artifacts/; replay with" \
	       "cargo +$(FUZZ_TOOLCHAIN) fuzz run $(FUZZ_BUILD_ARGS) TARGET fuzz/artifacts/TARGET/FILE)"; \
	  exit 1; \
	fi

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10

# Client-interop tests (tests/interop, pytest): the release echo binary and examples
# against the Python `websockets` client, and pages in Debian's headless Chromium
# driven by Playwright.
#
#   make venv-test                                .venv with tests/interop/requirements.txt
#   make test-interop [PYTEST_ARGS="-k chat"]     websockets client tests (< 60 s)
#   make test-browser [PYTEST_ARGS=...]           Chromium tests; installs apt's chromium if missing
#
# The stamp depends on the requirements file, so editing it reinstalls. Playwright's
# own browser download (`playwright install`) is never used: the tests launch
# /usr/bin/chromium. Screenshots of the demo page land in target/interop/.
INTEROP_REQUIREMENTS := tests/interop/requirements.txt
INTEROP_STAMP        := $(VENV)/.interop-requirements.stamp
PYTEST_ARGS          ?=

.PHONY: venv-test test-interop test-browser

$(INTEROP_STAMP): $(INTEROP_REQUIREMENTS) | $(VENV)/bin/pip
	$(VENV)/bin/pip install --disable-pip-version-check --quiet -r $(INTEROP_REQUIREMENTS)
	touch $@

venv-test: $(INTEROP_STAMP)

test-interop: venv-test openssl
	$(CARGO) build --release --examples --bins $(FEATURES)
	$(VENV)/bin/python -m pytest tests/interop -m "not browser" $(PYTEST_ARGS)

test-browser: venv-test redis-server openssl
	command -v chromium >/dev/null || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	$(CARGO) build --release --examples --bins $(FEATURES)
	$(VENV)/bin/python -m pytest tests/interop -m browser $(PYTEST_ARGS)

# Performance: bench/ is its own workspace (load generator, raw TCP echo ceiling,
# tokio-tungstenite and fastwebsockets peers), so `make test` never builds it.
#
#   make bench                    full run: markdown tables of medians (~13 min), then bench-tls
#   make bench-tls [BENCH_QUICK=1]  wss:// (a), (b), (c), (e) vs the peers behind tokio-rustls
#   make bench BENCH_QUICK=1      1 run x 1 s per cell, 1,000 idle connections
#   make bench BENCH_SECONDS=3 BENCH_RUNS=5 BENCH_WORKLOADS=a,b BENCH_SERVERS=wsreactor,rawecho
#   make bench-cluster            two nodes linked through redis-server (bench/cluster.py)
#   make bench BENCH_WORKLOADS=g  compressed echo vs Python websockets (from .venv: make venv-bench)
#   make bench BENCH_WORKLOADS=h BENCH_TAIL_RT=1   open-loop tail (loadgen --rate), SCHED_FIFO
#
# bench/run.py lists every knob; results land in bench/target/results/.
.PHONY: bench bench-cluster venv-bench

# (g)'s peer, Python `websockets`, runs from .venv; run.py makes it when missing.
BENCH_REQUIREMENTS := bench/requirements.txt
BENCH_STAMP        := $(VENV)/.bench-requirements.stamp
$(BENCH_STAMP): $(BENCH_REQUIREMENTS) | $(VENV)/bin/pip
	$(VENV)/bin/pip install --disable-pip-version-check --quiet -r $(BENCH_REQUIREMENTS)
	touch $@

venv-bench: $(BENCH_STAMP)

bench:
	$(PYTHON) bench/run.py

# Two `wsreactor --redis` nodes and a redis-server: 1,000 subscribers on each, one
# publisher on A, a few publish rates (~10 s each); deliveries/s, latency local and
# across the broker, CPU of each process. BENCH_SUBS, BENCH_RATES, BENCH_SECONDS.
bench-cluster: redis-server
	$(PYTHON) bench/cluster.py
	$(PYTHON) bench/run_tls.py

# wss:// only: (a), (b), (c), (e) over TLS for wsreactor and the peers behind tokio-rustls,
# and wsreactor over ws:// and rawecho (the floor) with the same client (bench/run_tls.py;
# BENCH_QUICK=1 for ~1 min).
.PHONY: bench-tls
bench-tls:
	$(PYTHON) bench/run_tls.py
