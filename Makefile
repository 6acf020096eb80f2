# basalt: the front door.
#   make run    build the default image and boot it in QEMU (serial console here)
#   make test   everything CI runs: lint, unit and host tests, image build, QEMU boots
#   make lint   rustfmt, clippy and crate layering only (make test runs it first)
#   make bench  build and boot figures, printed and written to docs/benchmarks.md

SHELL := /bin/bash
CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
BIN := target/$(TARGET)/release
BASALT := $(BIN)/basalt
SPEC ?= image/basalt.yaml
IMAGE ?= out/basalt.img
export BASALT_CACHE ?= $(HOME)/.cache/basalt
export SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: all deps inputs build image run lint test bench clean

all: image

# Host packages (tools/host-packages.txt, tools/host-python.txt), installed in
# one apt transaction each run, then every command they provide is checked.
deps:
	tools/deps

build:
	$(CARGO) build --release --workspace --bins

# Pinned Debian packages (image/inputs.lock) into $(BASALT_CACHE), sha256-checked.
inputs: build
	$(BASALT) fetch --lock image/inputs.lock

image: deps inputs
	$(BASALT) build --spec $(SPEC) --output $(IMAGE)

run: image
	$(BASALT) run $(IMAGE)

# Style, lints and crate layering: quick, so make test runs them before its
# long parts and stops at the first that fails.
lint:
	@echo "lint: cargo fmt --check"
	@$(CARGO) fmt --all -- --check || { echo "lint: code is not formatted as rustfmt.toml says; run 'cargo fmt --all'" >&2; exit 1; }
	@echo "lint: cargo clippy -D warnings"
	@$(CARGO) clippy --release --workspace --all-targets -- -D warnings || { echo "lint: clippy found warnings (above); fix them" >&2; exit 1; }
	@echo "lint: crate layering"
	@tools/check-layering || { echo "lint: a crate dependency is not allowed by docs/architecture.md" >&2; exit 1; }

test: lint deps inputs
	$(BASALT) build --spec $(SPEC) --output $(IMAGE)
	@# The whole run is kept in out/test.log; the report at its end totals it
	@# and lists every test that was skipped here, with why.
	set -o pipefail; BASALT_BIN=$(CURDIR)/$(BASALT) BASALT_IMAGE=$(CURDIR)/$(IMAGE) \
		$(CARGO) test --release --workspace -- --test-threads=1 2>&1 | tee out/test.log; \
		status=$$?; tools/test-report out/test.log; exit $$status

bench: deps inputs
	BASALT_BIN=$(CURDIR)/$(BASALT) tools/bench

clean:
	rm -rf out
