# One Makefile for people and CI. README.md gives new users `make dev` and `make test`;
# .ci/run calls `make test`.

SHELL := /bin/bash
CARGO ?= cargo
# Tests spawn real controller processes; run them one at a time so timing bounds hold on
# small machines.
IT_THREADS ?= 1

.PHONY: all deps dev test build build-next fmt-check lint unit bench-raft bench-scheduler bench-agent bench-jobs bench-storage bench-tls bench-deps clean-dev chaos chaos-sim

all: build

# System prerequisites: clang/libclang (RocksDB's bindings), promtool (metrics checks),
# iproute2 and nftables (partition tests, chaos harness), etcd-server (bench-raft runs etcd
# beside Steward) and protobuf-compiler/libprotobuf-dev (the etcd-client crate's build
# script), python3-grpcio (a test calls the API as an outside gRPC client), faketime
# (libfaketime: the chaos clock-skew action). Installs with
# apt-get as root; otherwise prints the command to run.
DEB_PACKAGES := clang libclang-dev prometheus iproute2 nftables etcd-server protobuf-compiler libprotobuf-dev python3-grpcio faketime
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "missing system packages:$$missing"; \
	  echo "run: sudo apt-get update && sudo apt-get install -y$$missing"; \
	  exit 1; \
	fi

# A local three-controller cluster on 127.0.0.1:7700-7702, data in ./.steward-dev.
dev: deps
	$(CARGO) run --bin steward -- dev

# Where cargo puts binaries (CI sets CARGO_TARGET_DIR outside the clone).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

build: deps build-next
	$(CARGO) build --workspace --all-targets

# The test-only build that knows one more command kind (feature level 5), kept as
# steward-next next to steward, for the rolling-upgrade test. Built first: the normal build
# after it puts the normal `steward` back.
build-next: deps
	$(CARGO) build -p steward-cli --features next-level
	cp $(TARGET_DIR)/debug/steward $(TARGET_DIR)/debug/steward-next

fmt-check:
	$(CARGO) fmt --all -- --check

lint: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests only (fast).
unit: build
	$(CARGO) test --workspace --lib --bins

# Everything CI runs. One `cargo test --workspace` so that features resolve as in `build`
# and nothing is compiled twice.
test: fmt-check lint build
	$(CARGO) test --workspace -- --test-threads=$(IT_THREADS)

# The deterministic simulation of the control plane over SEEDS seeds (make test runs 300);
# a failing seed is replayed with `steward-chaos sim --seed N`.
SEEDS ?= 10000
chaos-sim: build
	$(TARGET_DIR)/debug/steward-chaos sim --seeds $(SEEDS)

# Every scenario in chaos/scenarios/ against a local cluster in network namespaces (root),
# one report each, then a table of them (SEED= fixes the seed of every run).
chaos: build
	@$(TARGET_DIR)/debug/steward-chaos run-all chaos/scenarios $(if $(SEED),--seed $(SEED),)

# Raft throughput, latency and failover on three local controllers (prints figures).
bench-raft: build
	$(CARGO) run --bin bench-raft

# Scheduler placements/s per policy on the trace's cluster, and admission solve times.
bench-scheduler: build
	$(CARGO) run --bin bench-scheduler

# Agent CPU and RSS at 1 s heartbeats; the leader's heartbeat capacity.
bench-agent: build
	$(CARGO) run --bin bench-agent

# Jobs: allocations/s with 1,000 simulated nodes, submit -> running (p50/p99) beside Slurm
# when it is installed (`make bench-deps`), node loss -> work running elsewhere.
bench-jobs: build
	$(CARGO) run --bin bench-jobs

# Objects: put/get of 1 GiB beside BLAKE3, 3x fsync'd writes and a read; repair MiB/s
# against its budget; dedup; 1M chunk references (RSS, snapshot build, survey).
bench-storage: build
	$(CARGO) run --bin bench-storage

# What mutual TLS costs: KV writes, heartbeat capacity and object put, TLS over plaintext.
bench-tls: build
	$(CARGO) run --bin bench-tls

# Packages only the benchmarks' peers need (Slurm for bench-jobs).
bench-deps:
	@if [ "$$(id -u)" = "0" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge; \
	else \
	  echo "run: sudo apt-get update && sudo apt-get install -y slurm-wlm munge"; exit 1; \
	fi

clean-dev:
	rm -rf .steward-dev
