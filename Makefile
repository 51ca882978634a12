# Mycelium: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO              ?= go
BIN             := $(CURDIR)/bin
GOLANGCI_VERSION := v2.15.0
GOLANGCI        := $(BIN)/golangci-lint
FUZZTIME        ?= 30s
# Integration tests start their own redis-server processes on free loopback
# ports and stop them; this makes a missing redis-server a failure, not a skip.
TEST_ENV        := MYCELIUM_REQUIRE_REDIS=1 MYCELIUM_REQUIRE_PYTHON=1 MYCELIUM_REQUIRE_BROWSER=1
# The Python client (clients/python) is tested with Debian's packages, never
# the package index: python-deps installs them with apt when missing.
PYTHON          ?= /usr/bin/python3
PY_DEBS         := python3-redis python3-msgpack python3-pytest python3-pytest-asyncio python3-hypothesis python3-prometheus-client python3-hiredis python3-mypy python3-snappy python3-zstandard
# The secure run (test-secure) skips the tests that start binaries or make
# their own plain connections and users: the rest run over mutual TLS, with
# producers and workers as the ACL users of `bus-worker acl`.
SECURE_SKIP     := Console|BusWorker|BusBench|TLS|Password|CLIOutput|Permission|ACLRoles|CacheLeaderCancelledOrKilled|CheckRepo|AlertRules|CacheOnMiniredis|BatchUnderACLs|DeadLetterTooling|Cluster|Sentinel|WaitReplicas|HTTPBackend|RequestInterrupt|StreamWorkerKilled|Python

# The soak (test/soak runs the harness test/internal/soak, docs/soak.md): make soak runs SOAK of it; make test
# runs 60 seconds of it (soak-short) into its own directory.
SOAK            ?= 30m
SOAK_TIMEOUT    ?= 3h

export PATH := $(PATH):/usr/local/go/bin

.PHONY: help build test chromium console-assets soak soak-short test-python python-deps test-secure test-watermill test-watermill-full test-watermill-stress bench-watermill test-cluster run chaos bench bench-go bench-bus bench-breaker bench-suite bench-cluster bench-ab report-check lint vet check-repo fuzz tidy-check redis-server clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bus-worker and bus-bench into ./bin
	$(GO) build -o $(BIN)/ ./cmd/...

redis-server: ## install redis-server (and promtool, for the /metrics tests) with apt when missing
	@command -v redis-server >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
		echo "installing redis-server and prometheus (promtool) with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server prometheus >/dev/null; \
	}
	@redis-server --version

chromium: ## install Debian's chromium (the console's browser tests, report-check) with apt when missing
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	}
	@chromium --version 2>/dev/null

console-assets: ## re-vendor the console's browser assets from npm at the versions console/web/package-lock.json pins: uPlot (embedded) and axe-core (browser tests only)
	cd console/web && npm ci --ignore-scripts --no-audit --no-fund
	cp console/web/node_modules/uplot/dist/uPlot.iife.min.js console/web/node_modules/uplot/dist/uPlot.min.css console/assets/vendor/
	cp console/web/node_modules/uplot/LICENSE console/assets/vendor/uPlot.LICENSE
	cp console/web/node_modules/axe-core/axe.min.js console/testdata/
	cp console/web/node_modules/axe-core/LICENSE console/testdata/axe-core.LICENSE
	git status --short console/assets console/testdata

check-repo: ## fail when a tracked file is an executable binary or larger than 1 MiB (build outputs go to ./bin)
	./test/check-repo.sh

vet: ## go vet ./...
	$(GO) vet ./...

test: redis-server python-deps chromium check-repo vet tidy-check lint ## everything CI runs: the repository check, go vet, the tidy check, golangci-lint, go test -race over all packages (unit on miniredis, integration on redis-server, the console in headless chromium), test-secure, the Python client's tests, Watermill's suite against contrib/watermill, then the 60-second soak (last: it judges losses, dead letters and memory, never latency)
	$(TEST_ENV) $(GO) test -race -count=1 -timeout 10m ./...
	$(MAKE) --no-print-directory test-secure
	$(MAKE) --no-print-directory test-python
	$(MAKE) --no-print-directory test-watermill
	$(MAKE) --no-print-directory soak-short

python-deps: ## install the Python client's packages for its tests (Debian's, with apt) when missing
	@$(PYTHON) -c 'import redis, msgpack, pytest, pytest_asyncio, hypothesis, prometheus_client, hiredis, mypy, snappy, zstandard' 2>/dev/null || { \
		echo "installing $(PY_DEBS) with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PY_DEBS) >/dev/null; \
	}

test-python: redis-server python-deps ## the Python client: mypy --strict, codec (golden files from the Go tests, hypothesis) and the conformance suite against the Go bus-worker (mixed Go/Python callers and workers, Cluster and Sentinel rigs)
	$(GO) build -o $(BIN)/bus-worker ./cmd/bus-worker
	cd clients/python && $(PYTHON) -m mypy
	cd clients/python && PYTHONDONTWRITEBYTECODE=1 $(TEST_ENV) MYCELIUM_BUS_WORKER=$(BIN)/bus-worker $(PYTHON) -m pytest -q -p no:cacheprovider tests

test-watermill: redis-server ## Watermill's universal Pub/Sub suite (tests.TestPubSub) against the adapter in contrib/watermill (its own module), on a redis-server of its own that TestReconnect restarts, at the suite's full counts (~30 s; TestReconnect apart, without read-ahead); go test -v lists each suite test. Without -race: the suite's timeouts assume a one-at-a-time subscriber at full speed (the core's race tests cover the code)
	cd contrib/watermill && $(GO) mod tidy -diff && $(GO) vet ./... && $(GO) test -count=1 -timeout 15m -v ./...

test-watermill-full: test-watermill ## the same as test-watermill (which runs the suite's full counts since subscriptions read ahead)

bench-watermill: redis-server ## the Watermill adapter against watermill-redisstream on one redis-server: publish at 1/16/256 publishers, consume, Router end to end (medians of 3 alternating runs)
	cd contrib/watermill && MYCELIUM_WATERMILL_BENCH=1 $(GO) test -count=1 -timeout 30m -v -run CompareRedisstream ./...

test-watermill-stress: redis-server ## Watermill's stress variant (the suite ten times at once) against the adapter
	cd contrib/watermill && MYCELIUM_WATERMILL_STRESS=1 $(GO) test -count=1 -timeout 30m -v -run Stress ./...

test-secure: redis-server ## the integration suite over mutual TLS with its own CA, producers and workers as the least-privilege ACL users (bus-worker acl)
	MYCELIUM_TEST_SECURE=1 $(TEST_ENV) $(GO) test -race -count=1 -timeout 5m -skip '$(SECURE_SKIP)' ./test/

test-cluster: redis-server ## the Redis Cluster and Sentinel suites, long versions: 3 masters + 3 replicas (test/redis-cluster.sh), 5 failovers measured; make test runs the short ones
	MYCELIUM_CLUSTER_LONG=1 $(TEST_ENV) $(GO) test -race -count=1 -timeout 20m -v -run 'Cluster|Sentinel' ./test/

chaos: redis-server ## the long chaos suite (real redis-server and bus-worker processes); make test runs the short one
	MYCELIUM_CHAOS_LONG=1 $(TEST_ENV) $(GO) test -race -count=1 -timeout 30m -v -run Chaos ./test/chaos/

soak: redis-server ## the soak: SOAK (default 30m) of requests, events and poison at half the measured capacity, workers restarted and killed, Redis restarted; out/soak/soak.jsonl and report.html (checked in headless Chromium)
	MYCELIUM_SOAK=$(SOAK) $(TEST_ENV) $(GO) test -count=1 -timeout $(SOAK_TIMEOUT) -v -run '^TestSoak$$' ./test/soak/
	MIN_FIGURES=11 ./test/report-check.sh out/soak/report.html

soak-short: redis-server ## the 60-second soak make test runs last (out/soak-60s), without the race detector: it judges losses, dead letters and memory, and reports latency
	MYCELIUM_SOAK=60s MYCELIUM_SOAK_OUT=$(CURDIR)/out/soak-60s $(TEST_ENV) $(GO) test -count=1 -timeout 6m -run '^TestSoak$$' ./test/soak/

run: ## bus-worker serve --embedded: a worker on an in-memory Redis (no Redis needed); Ctrl-C stops it cleanly
	@$(GO) build -o $(BIN)/bus-worker ./cmd/bus-worker
	@trap 'exit 0' INT TERM; $(BIN)/bus-worker serve --embedded & wait $$!; wait $$! 2>/dev/null; exit 0

bench: bench-go bench-breaker bench-bus bench-suite ## all benchmarks: go test -bench, breaker vs gobreaker, bus-bench ratios, the seed suite with its report

bench-go: redis-server ## go test -bench with -benchmem: codec, stage histograms, and request/publish round trips on a redis-server
	$(TEST_ENV) $(GO) test -run='^$$' -bench=. -benchmem -count=1 ./codec/ ./metrics/ ./test/

bench-breaker: ## circuit breaker vs sony/gobreaker side by side at -cpu 1,2,8,32
	$(GO) test -run='^$$' -bench=Compare -benchmem -cpu 1,2,8,32 ./breaker/

bench-bus: redis-server build ## bus-bench rpc/publish scenarios against a redis-server this target starts and stops
	./test/bench.sh

bench-suite: redis-server build ## bus-bench --suite seed --report out/report against a redis-server it starts, then report-check
	./test/suite.sh

bench-cluster: redis-server build ## bus-bench --suite cluster: 1/3/12 partitions on a 3-master cluster vs a standalone Redis, 5 coordinated failovers and a crash, report in out/cluster
	./test/bench-cluster.sh

bench-ab: redis-server ## A/B: bus-bench at BASE (default HEAD) vs the working tree, alternating runs (PAIRS, ARGS, B_ARGS, FIELD; see test/ab.sh)
	./test/ab.sh $(BASE)

report-check: ## open out/report/report.html in headless Chromium (apt-installed when missing): no console errors, every chart drawn
	./test/report-check.sh out/report/report.html

lint: check-repo $(GOLANGCI) ## golangci-lint (pinned, installed into ./bin; beside another make test on the machine too)
	$(GOLANGCI) run --allow-parallel-runners ./...

$(GOLANGCI):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)

fuzz: ## run every fuzz target for FUZZTIME (default 30s) each
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg; \
		done; \
	done

tidy-check: ## fail if go.mod/go.sum are not tidy
	$(GO) mod tidy -diff

clean: ## remove ./bin and ./out
	rm -rf $(BIN) out
