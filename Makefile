# Each target is one command a new user runs: make venv | test | lint | demo | clean.

PYTHON ?= python3
VENV := .venv
# Rebuilt whenever pyproject.toml (dependencies, entry points) changes.
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

# pytest exits 5 when it collects no tests; make treats that as the failure it is.
test: venv
	$(VENV)/bin/python -m pytest

lint: venv
	$(VENV)/bin/ruff check .

demo: venv
	$(VENV)/bin/python -m scanxfer.demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
