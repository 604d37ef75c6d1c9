# sds-agent — an Envoy SDS provider sidecar in Swift.
# `make run` starts the agent on the embedded CA; `make test` runs every test. Each target installs the missing Debian
# packages it needs (and only those) first; see the package lists below.

SHELL        := /bin/bash
.DEFAULT_GOAL := help

# Debian packages, by what needs them. Swift 6.3 itself (with lld and swift-format) is assumed installed.
# build: `swift build` of the static release binaries (pkg-config finds the C libraries; their static archives and
#   glibc's libc.a come from the -dev packages; git fetches swift-log). Used by build, build-debug, run, fuzz.
BUILD_PACKAGES := git pkg-config libc6-dev libssl-dev libnghttp2-dev libprotobuf-c-dev
# protos: protoc-c, for `make protos` and `make protos-check` (the generated C is committed: a build needs none).
PROTO_PACKAGES := protobuf-c-compiler
# image: strip (binutils), the CA bundle the image ships, umoci and skopeo (Examples/image/make-image.sh).
IMAGE_PACKAGES := binutils ca-certificates umoci skopeo
# test: the peers and tools the tests run besides the venv's: python3 + venv (the pinned peers), openssl (unit and
#   integration), h2load (nghttp2-client), protoc (fake istiod), Prometheus + promtool, curl, podman + runc (the
#   image), iproute2 (network namespaces for peer hosts). `make test` also needs the build, protos and image lists.
TEST_PACKAGES  := python3 python3-venv openssl nghttp2-client protobuf-compiler prometheus curl podman runc iproute2
ALL_PACKAGES   := $(BUILD_PACKAGES) $(PROTO_PACKAGES) $(IMAGE_PACKAGES) $(TEST_PACKAGES)
VENV         := .venv
PYTHON       := $(VENV)/bin/python
SWIFT_BUILD_FLAGS ?=
# Release binaries are fully static (glibc, libssl/libcrypto, nghttp2, protobuf-c and the Swift runtime, linked by
# lld): no shared-library relocations or mappings at startup. Idle RSS: 14.0 MB with shared C libraries, 9.9 MB
# static (goal 12 MB). lld also ignores glibc's "dlopen in static binaries" link warnings (nothing here dlopens).
# Every function a working agent runs is linked next to the others (Sources/sds-agent/symbol-order.txt, written by
# `make order-file`; Swift and C code in per-function sections so lld can place each). The kernel maps code 64 KiB
# around each fault: scattered, the few functions that run made 8.8 MB of the 11 MB of code resident.
ORDER_FILE    := $(CURDIR)/Sources/sds-agent/symbol-order.txt
ORDER_FLAGS   := -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections \
                 -Xlinker --symbol-ordering-file=$(ORDER_FILE) -Xlinker --no-warn-symbol-ordering \
                 -Xlinker --script=$(CURDIR)/Sources/sds-agent/unnamed-text.lds
# Release builds skip Swift's runtime exclusivity checks (a table insert and removal around every mutation of a class
# property or global): 12% of a 10,000-stream push's instructions (callgrind). The debug builds `make test` runs its
# unit tests with, and `make sanitize`'s, keep the checks, so a violation fails there.
# They also reach generic types' metadata through accessor functions, not by demangling the type's name at run time:
# a name like `_DictionaryStorage<Int32, Readiness>` is decoded on first use and its `Hashable` conformance found by
# scanning every conformance record of the static binary (~145,000 instructions per type). Start-up -1.8M
# instructions (14.8M -> 13.0M, callgrind) for +48 KB of code; once resolved both ways are one cached load.
RELEASE_FLAGS := -c release --static-swift-stdlib -Xswiftc -static-executable -Xswiftc -use-ld=lld \
                 -Xswiftc -enforce-exclusivity=unchecked \
                 -Xswiftc -Xfrontend -Xswiftc -disable-concrete-type-metadata-mangled-name-accessors $(ORDER_FLAGS)
BIN_RELEASE  := .build/release
RUN_DIR      := $(CURDIR)/run
RUN_SOCKET   ?= $(RUN_DIR)/sds.sock
RUN_STATE    ?= $(RUN_DIR)/state

# `make image`: an OCI image built without a container daemon (umoci, skopeo), see Examples/image/make-image.sh.
IMAGE_DIR      := .build/image
IMAGE_NAME     := sds-agent
IMAGE_UID      := 10101
IMAGE_VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# No licence file and no public remote yet: SPDX's "no assertion" until the project names them.
IMAGE_SOURCE   ?= $(or $(shell git remote get-url origin 2>/dev/null),NOASSERTION)
IMAGE_LICENSES ?= NOASSERTION
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

PROTO_SRC    := $(sort $(wildcard Protos/*.proto))
PROTO_OUT    := Sources/CSDSProtos

export SDS_PYTHON := $(CURDIR)/$(PYTHON)

.PHONY: help deps deps-build deps-protos deps-image deps-test venv build build-debug image run test unit integration lint format protos protos-check bench order-file clean docs
.PHONY: fuzz sanitize sanitize-thread soak

help: ## Show this help
	@echo "sds-agent — Envoy SDS provider sidecar"
	@echo
	@echo "Quick start:  make run    (agent on the embedded CA, socket $(RUN_SOCKET))"
	@echo "              make test   (unit + real-peer integration tests)"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Installs the packages of $(1) that are missing: nothing when all are there; else `apt-get update` first, then
# `apt-get install` of the missing ones only, through sudo unless already root.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

deps: deps-test ## Install every missing Debian package any target uses (apt-get; idempotent)

deps-build: ## Install the missing packages a build needs (libssl-dev, libnghttp2-dev, libprotobuf-c-dev, ...)
	$(call apt_install,$(BUILD_PACKAGES))

deps-protos:
	$(call apt_install,$(PROTO_PACKAGES))

deps-image: ## Install the missing packages `make image` needs (build + umoci, skopeo, binutils, ca-certificates)
	$(call apt_install,$(BUILD_PACKAGES) $(IMAGE_PACKAGES))

# Tests build, check the protos and build the image: one list, so a fresh machine runs apt-get once for `make test`.
deps-test:
	$(call apt_install,$(ALL_PACKAGES))

$(VENV)/.stamp: Tests/Integration/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r Tests/Integration/requirements.txt
	touch $@

venv: deps-test $(VENV)/.stamp ## Python venv with the real peers (Envoy, grpcio, xds-protos, py-spiffe), pinned

build: deps-build ## Release build of sds-agent and sds-dump
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-agent
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-dump

build-debug: deps-build
	swift build --build-tests $(SWIFT_BUILD_FLAGS)

image: deps-image build ## OCI image of sds-agent + sds-dump (non-root, static): .build/image/oci and .build/image/sds-agent.tar
	RELEASE_DIR=$(BIN_RELEASE) OUT=$(IMAGE_DIR) IMAGE_NAME=$(IMAGE_NAME) IMAGE_VERSION=$(IMAGE_VERSION) \
	  IMAGE_UID=$(IMAGE_UID) IMAGE_SOURCE=$(IMAGE_SOURCE) IMAGE_REVISION=$(IMAGE_REVISION) \
	  IMAGE_LICENSES=$(IMAGE_LICENSES) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) Examples/image/make-image.sh

run: build ## Start sds-agent on the embedded CA, socket under ./run
	@mkdir -p $(RUN_DIR)
	$(BIN_RELEASE)/sds-agent run --socket $(RUN_SOCKET) --state-dir $(RUN_STATE) --trust-domain example.org

test: deps-test venv protos-check lint build-debug unit integration ## Unit tests and real-peer integration tests

unit: venv build-debug ## Swift unit tests (pure state machines, in-memory transports, codec round trips)
	swift test --skip-build $(SWIFT_BUILD_FLAGS)

integration: venv build image ## Tests against real peers: Envoy 1.40, grpcio + xds-protos, py-spiffe, openssl, h2load, Prometheus, curl, podman
	SDS_AGENT=$(CURDIR)/$(BIN_RELEASE)/sds-agent SDS_DUMP=$(CURDIR)/$(BIN_RELEASE)/sds-dump \
	  $(PYTHON) -m pytest -q -p no:cacheprovider Tests/Integration

lint: ## swift-format lint (strict)
	swift-format lint --strict --recursive --parallel Package.swift Sources Tests

format: ## swift-format in place
	swift-format format --in-place --recursive --parallel Package.swift Sources Tests

# Generates protoc-c output for Protos/*.proto into $(1), laid out like $(PROTO_OUT): sources at the top,
# headers under include/ (SwiftPM's public header dir, on the include path of the .c files), and the
# umbrella header CSDSProtos.h that includes every generated header.
define gen_protos
	rm -rf $(1) && mkdir -p $(1)/include
	protoc-c --proto_path=Protos --c_out=$(1) $(PROTO_SRC)
	mv $(1)/*.pb-c.h $(1)/include/
	{ echo '/* Generated by `make protos` from the files in Protos/. Do not edit. */'; \
	  echo '#ifndef CSDSPROTOS_H'; echo '#define CSDSPROTOS_H'; \
	  for h in $$(cd $(1)/include && ls *.pb-c.h | LC_ALL=C sort); do echo "#include \"$$h\""; done; \
	  echo '#endif'; } > $(1)/include/CSDSProtos.h
endef

# docs/configuration.md is written from the option table (Sources/SDSAgent/Options.swift) by the agent itself; a
# unit test (OptionTableTests) fails when the committed file is stale.
docs: ## Regenerate docs/configuration.md from the option table
	swift build $(SWIFT_BUILD_FLAGS) --product sds-agent
	@mkdir -p docs
	"$$(swift build $(SWIFT_BUILD_FLAGS) --show-bin-path)/sds-agent" --help-markdown > docs/configuration.md
	@echo "wrote docs/configuration.md"

protos: deps-protos ## Regenerate Sources/CSDSProtos from Protos/*.proto with protoc-c
	@$(call gen_protos,.build-protos)
	@rm -rf $(PROTO_OUT) && cp -r .build-protos $(PROTO_OUT)
	@echo "generated $$(ls $(PROTO_OUT)/*.pb-c.c | wc -l) files into $(PROTO_OUT)"

protos-check: deps-protos ## Fail when the committed protoc-c output is stale
	@$(call gen_protos,.build-protos-check)
	@diff -r -q .build-protos-check $(PROTO_OUT) >/dev/null || { \
	  diff -r -q .build-protos-check $(PROTO_OUT); echo "stale: $(PROTO_OUT) — run 'make protos'"; exit 1; }
	@echo "protos up to date"

# The release link order (see ORDER_FLAGS): re-record it after large code changes, then compare `make bench`.
order-file: venv build ## Record which functions a working agent runs (valgrind) into the release link order; relink
	$(call apt_install,valgrind binutils)
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-bench
	$(PYTHON) Tests/Bench/order_file.py
	@# SwiftPM does not know the order file is a link input: drop the binaries so they are linked again.
	rm -f $(BIN_RELEASE)/sds-agent $(BIN_RELEASE)/sds-dump
	$(MAKE) build

# Bench: bench.py measures the agent and its floors (sds-floor) in one run, runs istiod_bench.py (venv Python) and
# writes the whole run to BENCH_OUT; BENCH_COMPARE=<old.json> also prints each metric's ratio to a saved run (alone:
# Tests/Bench/compare.py old.json new.json). It first waits up to BENCH_WAIT_QUIET seconds for a quiet machine.
BENCH_OUT        ?= .build/bench/bench.json
BENCH_COMPARE    ?=
BENCH_WAIT_QUIET ?= 60

bench: venv build ## Benchmarks beside their floors: a table, the run in BENCH_OUT; BENCH_COMPARE=old.json (~2 min)
	$(call apt_install,linux-perf)
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-bench
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS) --product sds-floor
	$(PYTHON) Tests/Bench/bench.py --out $(BENCH_OUT) --wait-quiet $(BENCH_WAIT_QUIET) \
	  $(if $(BENCH_COMPARE),--compare $(BENCH_COMPARE))

# Soak: the release agent for SOAK_SECONDS at --svid-ttl 10s under two Envoys' mTLS traffic, SDS and Workload API
# client churn and hostile requests; samples RSS, descriptors, CPU and push latency every 10 s. Not part of `make
# test`. Writes SOAK_OUT (default .build/soak/soak.json) and the chart beside it (soak.svg); see Tests/Soak/README.md.
SOAK_SECONDS ?= 3600

soak: venv build ## Release agent under load for SOAK_SECONDS (default 3600): .build/soak/soak.{json,svg}; exit 1 past a bound
	SDS_AGENT="$${SDS_AGENT:-$(CURDIR)/$(BIN_RELEASE)/sds-agent}" SOAK_SECONDS=$(SOAK_SECONDS) \
	  $(PYTHON) Tests/Soak/soak.py

# Fuzzing: Tests/Fuzz is a package of its own (libFuzzer executables over the FuzzTargets module), so the normal
# build never links libFuzzer. Every module of ours is instrumented (-Xswiftc: SwiftPM's --sanitize covers only the
# fuzz package's own targets). Committed seeds: Tests/Fuzz/Corpus/<target> (read only); what a run adds goes to
# $(FUZZ_BUILD)/corpus/<target>, crashes to $(FUZZ_BUILD)/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= server-request-path wire-decoders workload-api-responses pki-parsing text-parsing http-request \
                jwt-svid agent-ops issuer-responses file-names bundle-endpoint
FUZZ_BUILD   := .build-fuzz
FUZZ_FLAGS   := -c release --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address

fuzz: deps-build ## libFuzzer + ASan on each target for FUZZ_SECONDS (default 60) each; prints execs and coverage
	swift build --package-path Tests/Fuzz --scratch-path $(FUZZ_BUILD) $(FUZZ_FLAGS)
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s (log: $(FUZZ_BUILD)/$$t.log)"; \
	  SWIFT_BACKTRACE=enable=no $(FUZZ_BUILD)/release/fuzz-$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t- \
	    $(FUZZ_BUILD)/corpus/$$t Tests/Fuzz/Corpus/$$t > $(FUZZ_BUILD)/$$t.log 2>&1 || failed="$$failed $$t"; \
	done; \
	printf '%-24s %12s %8s %8s %8s  %s\n' target execs exec/s cov ft result; \
	for t in $(FUZZ_TARGETS); do \
	  log=$(FUZZ_BUILD)/$$t.log; \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
	  rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log); \
	  cov=$$(grep -o 'cov: [0-9]*' $$log | tail -1 | cut -d' ' -f2); \
	  ft=$$(grep -o 'ft: [0-9]*' $$log | tail -1 | cut -d' ' -f2); \
	  case " $$failed " in *" $$t "*) result="FAILED: $$(grep -m1 -o 'Test unit written to .*' $$log || echo see $$log)";; \
	    *) result=ok;; esac; \
	  printf '%-24s %12s %8s %8s %8s  %s\n' $$t "$$execs" "$$rate" "$$cov" "$$ft" "$$result"; \
	done; \
	[ -z "$$failed" ] || { echo "add each crash to Tests/Fuzz/Corpus/<target>/ as a regression once fixed"; exit 1; }

# The unit tests under AddressSanitizer with LeakSanitizer on, in a scratch path of their own. The suppressions
# (Tests/Sanitizers/lsan.supp) name only the toolchain's XCTest harness and Foundation's Process (tests run Python
# peers with it): a leak in our code fails the run.
LSAN_SUPPRESSIONS := $(CURDIR)/Tests/Sanitizers/lsan.supp
sanitize: venv ## Swift unit tests under AddressSanitizer + LeakSanitizer (own build in .build-asan)
	swift build --build-tests --sanitize=address --scratch-path .build-asan $(SWIFT_BUILD_FLAGS)
	ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$(LSAN_SUPPRESSIONS) \
	  swift test --skip-build --sanitize=address --scratch-path .build-asan $(SWIFT_BUILD_FLAGS)

# The unit tests under ThreadSanitizer: the off-loop workers, the log sink's drain and tests that drive two loops on
# two threads are where a data race would be.
sanitize-thread: venv ## Swift unit tests under ThreadSanitizer (own build in .build-tsan)
	swift build --build-tests --sanitize=thread --scratch-path .build-tsan $(SWIFT_BUILD_FLAGS)
	TSAN_OPTIONS=halt_on_error=1 swift test --skip-build --sanitize=thread --scratch-path .build-tsan $(SWIFT_BUILD_FLAGS)

clean: ## Remove build products, venv and run dir
	rm -rf .build .build-* $(VENV) $(RUN_DIR)
