# The two commands of the README: `make up` and `make test` (linter, type checker, then the suite). Each sets itself up on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: up test system-packages clean

$(STAMP): pyproject.toml setup.py ingest/_scan.c  # the parser's C scan is built by the install
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aifmon needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[site,test]'
	@touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/aifmon up

system-packages:
	@.ci/install-system-packages

test: $(STAMP) system-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) data test-artifacts
