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

.PHONY: install test lint serve train evaluate proto bench loadtest clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,loadtest]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

serve: $(STAMP)
	$(BIN)/segserve serve --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

train: $(STAMP)
	$(BIN)/segserve train --model unet-shapes

evaluate: $(STAMP)
	$(BIN)/segserve evaluate --model unet-shapes

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Regenerate service/generated/ from protos/ (committed; tests/unit/test_generated.py checks freshness).
proto: $(STAMP)
	$(BIN)/python -m service.tools.protogen
