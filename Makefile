# Build, test and conformance entry points for wsreactor (GNU make).
#
#   make run [ARGS="--listen 127.0.0.1:9998 --path /echo"]   server on ws://127.0.0.1:9998/echo
#   make test                                             cargo test (unit, integration, doc tests)
#   make lint                                             rustfmt check + clippy -D warnings
#   make venv                                             .venv with kosoku (the conformance suite)
#   make conformance [CONFORMANCE_ARGS="--cases '6.*'"]   kosoku cases 1.*-10.* against the release build
#   make clean

CARGO   ?= cargo
PYTHON  ?= python3
VENV    := .venv
ARGS    ?=
CONFORMANCE_ARGS ?=
# Pinned so that a new kosoku release can't change verdicts under us; bumping
# it changes the stamp name below, so the next `make venv` reinstalls.
KOSOKU_VERSION ?= 0.1.0
KOSOKU_STAMP   := $(VENV)/.kosoku-$(KOSOKU_VERSION).stamp

.PHONY: run test lint venv conformance clean

run:
	$(CARGO) run --release -- $(ARGS)

test:
	$(CARGO) test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# bin/pip is the target rather than the directory: a `python3 -m venv` that
# dies in ensurepip (Debian without python3-venv) leaves a venv without pip,
# so we remove it to let the next run retry instead of trusting a broken one.
$(VENV)/bin/pip:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(KOSOKU_STAMP): | $(VENV)/bin/pip
	$(VENV)/bin/pip install --disable-pip-version-check --quiet 'kosoku==$(KOSOKU_VERSION)'
	touch $@

venv: $(KOSOKU_STAMP)

# The script starts the server on a free loopback port, runs kosoku, always
# stops that server (by PID) and fails unless every case is OK/INFORMATIONAL.
conformance: venv
	$(CARGO) build --release
	$(VENV)/bin/python scripts/conformance.py $(CONFORMANCE_ARGS)

clean:
	$(CARGO) clean
	rm -rf $(VENV)
