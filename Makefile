# The README's commands. `make demo` runs the main job end to end; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup up down status demo test test-deps bench lint

setup:            ## install everything (idempotent)
	@bash scripts/setup.sh

up: setup         ## start Weaviate, MLflow and Airflow on 127.0.0.1
	@$(VENV)/pipelines up

down:             ## stop what `up` started
	@$(VENV)/pipelines down

status:
	@$(VENV)/pipelines status

demo: up          ## main job: re-index, retrain, promote, answer one question
	@$(VENV)/pipelines demo

test-deps:        ## system packages the integration tests start (Chromium, PostgreSQL, Redis)
	@bash scripts/test_deps.sh

test: setup test-deps  ## the whole test suite against real services
	@$(VENV)/pytest tests

bench: setup      ## benchmarks; results printed and saved under bench/results/
	@$(VENV)/python bench/reindex.py
	@$(VENV)/python bench/train.py

lint:
	@$(VENV)/ruff check pipelines dags tests bench && $(VENV)/ruff format --check pipelines dags tests bench && $(VENV)/mypy
