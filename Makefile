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

# Host packages, installed only when missing (apt-get needs root; CI runs as root).
deps:
	@missing=$$(grep -v '^\s*#' tools/host-packages.txt | sed 's/#.*//' | xargs -n1 | sort -u | \
		while read p; do dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed' || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
		echo "installing host packages:" $$missing; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# moto: a local AWS API server for the tests of basalt publish aws.
	@command -v moto_server >/dev/null || { python3 -m pip install -q 'moto[server]' && { command -v pyenv >/dev/null && pyenv rehash || true; }; }
	@command -v moto_server >/dev/null || { echo "moto_server is not on PATH after pip install 'moto[server]'"; exit 1; }

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
	BASALT_BIN=$(CURDIR)/$(BASALT) BASALT_IMAGE=$(CURDIR)/$(IMAGE) \
		$(CARGO) test --release --workspace -- --test-threads=1

bench: deps inputs
	BASALT_BIN=$(CURDIR)/$(BASALT) tools/bench

clean:
	rm -rf out
