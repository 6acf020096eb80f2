# basalt: the front door.
#   make run    build the default image and boot it in QEMU (serial console here)
#   make test   everything CI runs: unit and host tests, image build, QEMU boots
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

.PHONY: all deps inputs build image run test bench clean

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

test: deps inputs
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
