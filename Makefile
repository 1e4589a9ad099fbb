# SpeedMimi entry points. `make bench` is the main job; `make test` the tests.
# Binaries go to $(CARGO_TARGET_DIR) when it is set, else target/.
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RELEASE := $(TARGET_DIR)/release
LOADGEN := $(RELEASE)/loadgen

.PHONY: bench-https scale-100k-tls bench-reconfig bench-faults bench-upgrade bench-tls soak all build build-prod test lint fmt bench bench-peers peers-table bench-loadgen \
        report test-million scale-100k gate profile fuzz clean docker-build test-deploy test-docker

all: build

build:
	$(CARGO) build --release --workspace

# Deployment build: LTO and one codegen unit (see [profile.prod] in Cargo.toml).
build-prod:
	$(CARGO) build --profile prod --workspace

# The Rust tests, then the deployment files' tests (test-deploy).
test:
	$(CARGO) test --workspace
	$(MAKE) test-deploy

# deploy/: the systemd unit (systemd-analyze verify), the Kubernetes manifests
# (kubectl kustomize + kubernetes-validate), deploy.sh in a temporary root and
# network namespaces. Each skips with a message when its tool is missing.
# About 30 s after the build. The monitoring files are tested by
# proxy/tests/monitoring.rs (cargo test).
test-deploy: build
	BIN_DIR=$(RELEASE) deploy/tests/systemd.sh
	python3 deploy/tests/k8s.py $(RELEASE)
	BIN_DIR=$(RELEASE) deploy/tests/deploy_sh.sh

# The container image: speedmimi:VERSION and :latest, FROM scratch with the
# three binaries linked statically (glibc, crt-static) and deploy/speedmimi.yaml.
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC := $(TARGET_DIR)/$(STATIC_TARGET)/release
VERSION = $(shell $(CARGO) pkgid -p speedmimi | sed 's/.*[#@]//')
docker-build:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --target $(STATIC_TARGET) \
		-p speedmimi -p loadgen -p tuner
	deploy/docker/build.sh $(STATIC) $(VERSION)

# The image for real (deploy/tests/docker.sh): backend, proxy and client
# containers on a private network; removes what it made. A separate target:
# the static build takes several minutes the first time. Skips without Docker.
test-docker: docker-build
	deploy/tests/docker.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Main job: scenarios/default.yaml (speedmimi + loadgen backend at 100, 1k and
# 10k connections, and 1k over HTTPS; about 1.5 minutes). Ends by printing
# the path of report.html.
bench: build
	$(LOADGEN) bench --scenario scenarios/default.yaml

# Re-render a run directory: make report DIR=results/default-...
report:
	@test -n "$(DIR)" || { echo "usage: make report DIR=results/NAME-TIME"; exit 2; }
	$(LOADGEN) report $(DIR)

# SpeedMimi vs nginx vs HAProxy, interleaved: first the wrk table of
# peers-table (req/s, p99, CPU per request, idle RSS; ~6 minutes), then the
# same three under loadgen on the same charts (scenarios/peers.yaml, ~4
# minutes). Ends with report.html's path.
bench-peers: peers-table
	$(LOADGEN) bench --scenario scenarios/peers.yaml

# The issue-2 table (ci/bench_peers.py with wrk): req/s, p99, CPU per request
# (user and system) and idle RSS per connection of speedmimi, nginx, HAProxy
# and the zero-parsing TCP forwarder (proxy/examples), the floor. ROUNDS=7
# for the README's table (default 3).
peers-table: build
	$(CARGO) build --release --example tcp_forwarder
	ci/bench_peers.py --rounds $(or $(ROUNDS),3) --proxies speedmimi,nginx,haproxy,forwarder --json results/peers.json

# loadgen vs wrk against the same backend.
bench-loadgen: build
	ci/bench-loadgen.sh

clean:
	$(CARGO) clean
	rm -rf results

# 1,000,000 concurrent connections through the proxy on this machine, in a
# fresh network namespace; 0 errors; report written. About 5 minutes.
test-million: build
	$(LOADGEN) bench --scenario scenarios/million.yaml

# 100,000 connections held 30 s through 8 proxy processes; 0 errors.
scale-100k: build
	$(LOADGEN) bench --scenario scenarios/scale-100k.yaml

# 100,000 TLS connections held through 8 proxy processes beside the same
# 100,000 in plaintext, one session; 0 errors; proxy RSS per held connection
# of each. About 3 minutes.
scale-100k-tls: build
	$(LOADGEN) bench --scenario scenarios/scale-100k-tls.yaml

# Plaintext and HTTPS side by side through speedmimi (scenarios/tls.yaml):
# keep-alive at 100 and 1k connections, full and resumed handshakes/s.
# About 1.5 minutes. (bench-tls is ci/bench_tls.py, against nginx and wrk.)
bench-https: build
	$(LOADGEN) bench --scenario scenarios/tls.yaml

# Load under live reconfiguration: 1000 connections for 30 s while the admin
# API switches the balancer and adds/removes a backend every second.
bench-reconfig: build
	SPEEDMIMI=target/release/speedmimi LOADGEN=target/release/loadgen ci/bench-reconfig.sh

# Faults under load (ci/bench_faults.py): a backend killed and restarted, a
# worker process killed, SIGHUP every second, 10,000 slowloris clients, the
# proxy out of file descriptors, the access log's disk full. Errors, requests
# served and time to recover per scenario; results/bench-faults.txt. About 3
# minutes; run as root (it mounts a 64 KiB tmpfs).
bench-faults: build
	SPEEDMIMI=$(RELEASE)/speedmimi LOADGEN=$(LOADGEN) ci/bench_faults.py

# Upgrading the binary under load (ci/bench_upgrade.py): SIGUSR2 twice during
# keep-alive and new-connection load, 1 and 2 processes; failed requests,
# admin failures, time to serve and to drain. results/bench-upgrade.txt, ~30 s.
bench-upgrade: build
	SPEEDMIMI=$(RELEASE)/speedmimi LOADGEN=$(LOADGEN) ci/bench_upgrade.py

# HTTPS clients (ci/bench_tls.py): loadgen against wrk over TLS to Debian's
# nginx with a P-256 certificate it makes: keep-alive req/s and CPU per request
# at 100 and 5,000 connections, full and resumed handshakes/s, RSS per held TLS
# connection; ROUNDS interleaved, medians. results/bench-tls.txt, ~3 minutes.
ROUNDS ?= 3
bench-tls: build
	LOADGEN=$(LOADGEN) ci/bench_tls.py --rounds $(ROUNDS)
	SPEEDMIMI=$(RELEASE)/speedmimi LOADGEN=$(LOADGEN) ci/bench_tls_proxies.py --rounds $(ROUNDS)

# Soak (ci/soak.py): keep-alive and new-connection load, slow clients, a
# reload every minute, a backend restart every 3 minutes, for DURATION seconds
# in windows of WINDOW; per-window table, verdict (RSS flat, p99 drift, 0
# errors, no descriptor left once the load stops) and report.html in
# results/soak-*/. BARS=leaks fails only on errors and descriptors left
# behind (CI's short run).
DURATION ?= 3600
WINDOW ?= 300
BARS ?= all
soak: build
	SPEEDMIMI=$(RELEASE)/speedmimi LOADGEN=$(LOADGEN) ci/soak.py --duration $(DURATION) \
		--window $(WINDOW) --bars $(BARS)

# CI performance gate: speedmimi vs nginx ratios (5 interleaved rounds) against
# the floors in ci/gates.yaml, and callgrind instructions per request against
# ci/callgrind-baseline.json (3%). Prints a table; non-zero exit on a regression.
gate: build
	ci/gate.py

# libFuzzer on the parsers, SECONDS per target (fuzz/, docs/fuzzing.md).
SECONDS ?= 60
fuzz:
	ci/fuzz.sh $(SECONDS)

# A CPU profile of the proxy under load as a flame graph SVG (perf + inferno).
profile: build
	ci/profile.sh
