# climb: two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, run every asset on the embedded demo corpus (CPU)
#   make test   - create .venv, install, run ruff (lint + format check) and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export CLIMB_HOME ?= $(CURDIR)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint dev bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/climb demo

lint: install
	$(BIN)/ruff check climb_assets climb_assets_tests bench
	$(BIN)/ruff format --check climb_assets climb_assets_tests bench

test: lint
	$(BIN)/pytest -q

# Started from inside DAGSTER_HOME: Dagster warns about a dagster.yaml in the current folder that
# is not DAGSTER_HOME's (ours is the template copied there). Local paths resolve against
# CLIMB_HOME, not the current folder. `dg dev` (dagster-dg-cli) would replace `dagster dev`; we
# keep the command that ships with dagster and silence only its notice about that.
DEV_WARNINGS := ignore:Function `dev_command` is superseded
dev: install $(DAGSTER_HOME)/dagster.yaml
	cd $(DAGSTER_HOME) && PYTHONWARNINGS='$(DEV_WARNINGS)' $(abspath $(BIN))/dagster dev \
		-h 127.0.0.1 -p 3000 -w $(CURDIR)/workspace.yaml

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf .climb .dagster
