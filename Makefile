# The README's commands. `make demo` runs the main job end to end; `make test` runs the tests.
# Tiers: `make check` (seconds to minutes, no service) < `make test-integration` (real services) ; `make test` = both.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# Extra pytest arguments, e.g. `make check PYTEST_ARGS=-x` or `--junitxml=...` (.ci/run).
PYTEST_ARGS ?=
# Lint and format check, shared by `check` and `lint`.
RUFF_CHECK = $(VENV)/ruff check pipelines dags tests bench && $(VENV)/ruff format --check pipelines dags tests bench
# pytest-xdist workers for the real-service tier, each with its own stack on its own ports (tests/conftest.py). Each
# file is one unit of work (module fixtures are built once) and the model-training files share one (they run one
# after another: see tests/conftest.py). On this 2-core machine, idle, 2 workers ran the tier in 21 min 10 s against
# 30 min 9 s in one process: half of the one-process run is waiting (settle sleeps, Airflow polls, subprocesses).
# TEST_WORKERS=0 runs one process; on a runner with more cores try TEST_WORKERS=<cores>.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: setup setup-python up down status demo check test test-integration test-deps bench lint format hooks

setup:            ## install everything (idempotent)
	@bash scripts/setup.sh

setup-python:     ## what `make check` needs: .venv and the sample data (no Weaviate build)
	@bash scripts/setup.sh --no-weaviate

up: setup         ## start Weaviate, MLflow, Airflow and the answering service on 127.0.0.1
	@$(VENV)/pipelines up

down:             ## stop what `up` started
	@$(VENV)/pipelines down

status:
	@$(VENV)/pipelines status

demo: up          ## main job: re-index, retrain, promote, answer one question
	@$(VENV)/pipelines demo

# mypy (one core, about 50 s with a fresh clone's empty cache) runs beside the tests (one core, about 55 s); its
# report is printed after them, and check fails if either fails.
check: setup-python  ## fast tier, starts no service: lint, format check, mypy, and every test not marked integration
	@echo "check: ruff check, ruff format --check"
	@$(RUFF_CHECK)
	@echo "check: mypy, beside the tests that need no service (unit, dags, data): pytest -m 'not integration'"
	@report=$$(mktemp); $(VENV)/mypy > "$$report" 2>&1 & types=$$!; \
	$(VENV)/pytest tests -m "not integration" $(PYTEST_ARGS); tests=$$?; \
	wait $$types; typed=$$?; echo "check: mypy"; cat "$$report"; rm -f "$$report"; \
	exit $$(( tests != 0 || typed != 0 ))

test-deps:        ## system packages some tests start or call (Chromium, PostgreSQL, Redis, docker-compose)
	@bash scripts/test_deps.sh

test-integration: setup test-deps  ## real-service tier: Weaviate, MLflow, Airflow, PostgreSQL, Redis, Chromium, training
	@$(VENV)/pytest tests -m integration $(XDIST) $(PYTEST_ARGS)

test: setup test-deps  ## the whole test suite, both tiers, against real services
	@$(VENV)/pytest tests $(XDIST) $(PYTEST_ARGS)

bench: setup      ## benchmarks; results printed and saved under bench/results/ (the README tables' scales)
	@$(VENV)/pip install -q -c constraints.txt -e ".[bench]"  # the peers (LangChain, LlamaIndex); never the product's
	@$(VENV)/pipelines up --no-airflow
	@$(VENV)/python bench/index_peers.py --scale 3 --repeats 5
	@$(VENV)/python bench/index_scale.py --scales 1 5 25
	@$(VENV)/python bench/tune_retrieval.py --salts 20
	@$(VENV)/python bench/public_retrieval.py
	@$(VENV)/python bench/reindex.py --scale 4
	@$(VENV)/python bench/train.py
	@$(VENV)/python bench/lora_quality.py

lint:             ## ruff (lint + format check) and mypy; `make format` fixes what ruff can
	@$(RUFF_CHECK) && $(VENV)/mypy

format:
	@$(VENV)/ruff check --fix pipelines dags tests bench && $(VENV)/ruff format pipelines dags tests bench

hooks: setup-python  ## install the git pre-commit hooks (.pre-commit-config.yaml)
	@$(VENV)/pre-commit install
