# The commands the README names. Each creates .venv on first use and installs the project into it;
# a second run finds the stamp up to date and starts at once.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 9000
METRICS_PORT ?= 8080

.PHONY: install test test-all lint serve train evaluate proto bench loadtest soak gpu-check clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,loadtest]'
	$(BIN)/pip install -q -e ./clients/python
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# make test: everything but the `extended` variants (CI runs it, ~15 min on 2 cores); make test-all: all.
test: lint
	$(BIN)/python -m pytest -m "not extended"

test-all: lint
	$(BIN)/python -m pytest

serve: $(STAMP)
	$(BIN)/segserve serve --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

train: $(STAMP)
	$(BIN)/segserve train --model unet-shapes

evaluate: $(STAMP)
	$(BIN)/segserve evaluate --model unet-shapes

# Load test against a running service (make serve): locust over HTTP and gRPC, results under
# loadtests/results/tmp/. USERS, SPAWN_RATE, DURATION (s); LOADTEST_ARGS for more options.
USERS ?= 8
SPAWN_RATE ?= 2
DURATION ?= 60
loadtest: $(STAMP)
	$(BIN)/python loadtests/run.py --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) \
		--host http://$(HOST):$(PORT) --grpc-target $(HOST):$(GRPC_PORT) $(LOADTEST_ARGS)

# The benchmark: raw model vs served, one run on this machine (quiet it first); writes
# loadtests/results/<date>-<machine>.{json,md} and PNG plots. BENCH_ARGS="--quick" for a smoke run.
bench: $(STAMP)
	$(BIN)/python loadtests/bench.py $(BENCH_ARGS)

# Long run (not in CI, which runs a 2-minute one in make test): a mixed load over HTTP and gRPC for
# SOAK_MINUTES against its own segserve serve (SOAK_ARGS="--url ... --grpc-target ... --metrics-url ..."
# for a running one); fails when a process, the object store or the metric series grow past their
# bounds, or an answer is not a documented status. Report: loadtests/results/tmp/soak-*.{json,md}.
SOAK_MINUTES ?= 20
soak: $(STAMP)
	$(BIN)/python loadtests/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# On a machine with CUDA: the GPU tests and a short benchmark in the split topology (about 8 minutes),
# results in loadtests/results/<date>-gpu-check.md.
gpu-check: $(STAMP)
	$(BIN)/python loadtests/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Regenerate the gRPC code from protos/: service/generated/ and the client's
# clients/python/segserve_client/_generated/ (committed; tests/unit/test_generated.py checks both).
proto: $(STAMP)
	$(BIN)/python -m service.tools.protogen
