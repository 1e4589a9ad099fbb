# SpeedMimi entry points. `make bench` is the main job; `make test` the tests.
CARGO ?= cargo
RELEASE := target/release

.PHONY: all build build-prod test lint fmt bench bench-peers bench-loadgen clean

all: build

build:
	$(CARGO) build --release --workspace

# Deployment build: LTO and one codegen unit (see [profile.prod] in Cargo.toml).
build-prod:
	$(CARGO) build --profile prod --workspace

test:
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Main job: the proxy in front of a built-in backend, driven by loadgen at
# several connection counts; prints the figures and writes them under results/.
bench: build
	scenarios/quick-bench.sh

# SpeedMimi vs nginx vs HAProxy (installs the peers and wrk from Debian if missing).
bench-peers: build
	ci/bench_peers.py --json results/peers.json

# loadgen vs wrk against the same backend.
bench-loadgen: build
	ci/bench-loadgen.sh

clean:
	$(CARGO) clean
	rm -rf results
