# The two commands of the README:  make run  |  make test
# Python 3.11+, Go and Rust (cargo) are needed; influxd is built once per machine (see README).
# Every install takes the exact versions in constraints.txt (what the suite passed with);
# `make lock` updates them (then run `make test`, and commit both).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt
UV_VERSION := 0.13.9

.PHONY: run test lint influxd lock bench clean

run: $(VENV)/.installed
	$(BIN)/dsmr-ts influxd path >/dev/null
	$(BIN)/dsmr-ts run

test: $(VENV)/.installed-test lint
	$(BIN)/dsmr-ts influxd path
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint and formatting) on the tree, mypy on dsmr_ts/ (ruff.toml, mypy.ini).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

influxd: $(VENV)/.installed
	$(BIN)/dsmr-ts influxd path

# The newest versions setup.py allows, pinned into constraints.txt.
lock: $(VENV)/.installed
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile --quiet --upgrade --python-version 3.11 --all-extras --custom-compile-command "make lock" \
		--output-file $(CONSTRAINTS) setup.py

$(VENV)/.venv-made:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

# The service alone (no test extras), then the test extras on top.
$(VENV)/.installed: $(VENV)/.venv-made setup.py $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
