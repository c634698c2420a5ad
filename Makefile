# The two commands of the README:  make run  |  make test
# Python 3.11+, Go and Rust (cargo) are needed; influxd is built once per machine (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test influxd bench clean

run: $(VENV)/.installed
	$(BIN)/dsmr-ts influxd path >/dev/null
	$(BIN)/dsmr-ts run

test: $(VENV)/.installed
	$(BIN)/dsmr-ts influxd path
	$(BIN)/python -m pytest $(PYTEST_ARGS)

influxd: $(VENV)/.installed
	$(BIN)/dsmr-ts influxd path

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
