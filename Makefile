# Arena Flywheel — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_OUT := services
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
HELM := $(VENV)/bin/helm
CHART := charts/arena-flywheel

export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: help setup run test test-fast lint proto proto-check chart bench gpu-check clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install the project with CPU extras (torch pinned to 2.13.0)

# Torch goes in the same pip command as the rest: alone, a dependency would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]' 'torch==2.13.0'
	touch $(STAMP)

run: setup ## The demo: a real flywheel on the CPU (tiny models, 2 iterations), then stop
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/arena demo

test: setup ## Run unit, integration and end-to-end tests
	$(PY) -m pytest tests

test-fast: setup ## Unit tests only
	$(PY) -m pytest tests/unit -q

lint: setup ## ruff, mypy and the import-layering contracts
	$(VENV)/bin/ruff check services tests benchmarks tools
	$(VENV)/bin/ruff format --check services tests benchmarks tools
	$(VENV)/bin/mypy services
	$(VENV)/bin/lint-imports

proto: setup ## Regenerate the Python code for protos/ into services/arena
	rm -rf $(PROTO_OUT)/arena
	$(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=$(PROTO_OUT) \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(PROTO_OUT) \
	  $(PROTO_FILES)
	find $(PROTO_OUT)/arena -type d -exec sh -c 'printf "%s\n" "\"\"\"Generated from protos/ by make proto; never edit by hand.\"\"\"" > "$$1/__init__.py"' _ {} \;
	touch $(PROTO_OUT)/arena/py.typed

proto-check: proto ## Fail if the checked-in generated code differs from protos/
	@git add -N $(PROTO_OUT)/arena && git diff --exit-code --stat -- $(PROTO_OUT)/arena \
	  || (echo "generated code is stale: run 'make proto' and commit" && exit 1)

$(HELM): $(STAMP)
	$(PY) tools/fetch_helm.py --dest $(VENV)/bin

chart: $(HELM) ## helm lint, render every values profile, validate against Kubernetes schemas
	$(PY) tools/check_chart.py --helm $(HELM) --chart $(CHART) --values-dir deploy/values

bench: setup ## Benchmarks, side by side with their reference implementations
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# A GPU node's own python3 (CUDA torch; the venv's torch is the CPU build), GPU_PYTHON to change it;
# wheels in .whl/ are installed first (a lent machine without network). Reports land in OUT.
GPU_PYTHON ?= python3
gpu-check: ## On a GPU node: backend vs raw vLLM (or HF generate), LoRA, swap; SFT/DPO (ZeRO-2) steps
	GPU_PYTHON=$(GPU_PYTHON) OUT=$${OUT:-gpu-check-out} INFERENCE_TIMEOUT=3600 TRAINING_TIMEOUT=1800 \
	  INFERENCE_ARGS="$${INFERENCE_ARGS:-}" TRAINING_ARGS="$${TRAINING_ARGS:-}" bash tools/device_gpu_check.sh

clean: ## Remove the venv, caches and local stack state
	rm -rf $(VENV) .arena .pytest_cache .mypy_cache .ruff_cache
