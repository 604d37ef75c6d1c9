# sds-agent — an Envoy SDS provider sidecar in Swift.
# `make run` starts the agent on the embedded CA; `make test` runs every test. Both install what they need.

SHELL        := /bin/bash
.DEFAULT_GOAL := help

APT_PACKAGES := libssl-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
                nghttp2-client openssl pkg-config python3 python3-venv
VENV         := .venv
PYTHON       := $(VENV)/bin/python
SWIFT_BUILD_FLAGS ?=
RELEASE_FLAGS := -c release --static-swift-stdlib
BIN_RELEASE  := .build/release
RUN_DIR      := $(CURDIR)/run
RUN_SOCKET   ?= $(RUN_DIR)/sds.sock
RUN_STATE    ?= $(RUN_DIR)/state

PROTO_SRC    := $(sort $(wildcard Protos/*.proto))
PROTO_OUT    := Sources/CSDSProtos

export SDS_PYTHON := $(CURDIR)/$(PYTHON)

.PHONY: help deps venv build build-debug run test unit integration lint format protos protos-check bench clean

help: ## Show this help
	@echo "sds-agent — Envoy SDS provider sidecar"
	@echo
	@echo "Quick start:  make run    (agent on the embedded CA, socket $(RUN_SOCKET))"
	@echo "              make test   (unit + real-peer integration tests)"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## Install missing Debian packages (apt-get; idempotent)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.stamp: Tests/Integration/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r Tests/Integration/requirements.txt
	touch $@

venv: deps $(VENV)/.stamp ## Python venv with the real peers (Envoy, grpcio, xds-protos, py-spiffe), pinned

build: deps ## Release build of sds-agent and sds-dump
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-agent
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-dump

build-debug: deps
	swift build --build-tests $(SWIFT_BUILD_FLAGS)

run: build ## Start sds-agent on the embedded CA, socket under ./run
	@mkdir -p $(RUN_DIR)
	$(BIN_RELEASE)/sds-agent run --socket $(RUN_SOCKET) --state-dir $(RUN_STATE) --trust-domain example.org

test: deps venv protos-check build-debug unit integration ## Unit tests and real-peer integration tests

unit: build-debug ## Swift unit tests (pure state machines, in-memory transports, codec round trips)
	swift test --skip-build $(SWIFT_BUILD_FLAGS)

integration: venv build ## Tests against real peers: Envoy 1.40, grpcio + xds-protos, py-spiffe, openssl, nghttp
	SDS_AGENT=$(CURDIR)/$(BIN_RELEASE)/sds-agent SDS_DUMP=$(CURDIR)/$(BIN_RELEASE)/sds-dump \
	  $(PYTHON) -m pytest -q -p no:cacheprovider Tests/Integration

lint: ## swift-format lint (strict)
	swift-format lint --strict --recursive --parallel Package.swift Sources Tests

format: ## swift-format in place
	swift-format format --in-place --recursive --parallel Package.swift Sources Tests

protos: deps ## Regenerate Sources/CSDSProtos from Protos/*.proto with protoc-c
	@rm -rf .build-protos && mkdir -p .build-protos
	protoc-c --proto_path=Protos --c_out=.build-protos $(PROTO_SRC)
	@rm -f $(PROTO_OUT)/*.pb-c.c $(PROTO_OUT)/include/*.pb-c.h
	@for f in .build-protos/*.pb-c.c; do cp $$f $(PROTO_OUT)/; done
	@for f in .build-protos/*.pb-c.h; do cp $$f $(PROTO_OUT)/include/; done
	@# protoc-c includes its headers from the proto's directory; ours live under include/.
	@echo "generated $$(ls $(PROTO_OUT)/*.pb-c.c | wc -l) files into $(PROTO_OUT)"

protos-check: deps ## Fail when the committed protoc-c output is stale
	@rm -rf .build-protos-check && mkdir -p .build-protos-check
	@protoc-c --proto_path=Protos --c_out=.build-protos-check $(PROTO_SRC)
	@for f in .build-protos-check/*.pb-c.c; do cmp -s $$f $(PROTO_OUT)/$$(basename $$f) || { echo "stale: $(PROTO_OUT)/$$(basename $$f) — run 'make protos'"; exit 1; }; done
	@for f in .build-protos-check/*.pb-c.h; do cmp -s $$f $(PROTO_OUT)/include/$$(basename $$f) || { echo "stale: $(PROTO_OUT)/include/$$(basename $$f) — run 'make protos'"; exit 1; }; done
	@echo "protos up to date"

bench: venv build ## Benchmarks, one JSON object per metric
	$(PYTHON) Tests/Bench/bench.py

clean: ## Remove build products, venv and run dir
	rm -rf .build .build-* $(VENV) $(RUN_DIR)
