# Two commands for a newcomer: `make up` and `make test`. Both set up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := api/web
CHART := $(WEB)/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js

.PHONY: up test bench setup clean

setup: $(STAMP) $(CHART)

# The stamp depends on pyproject.toml, so a changed dependency list reinstalls.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tickmesh needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(CHART): $(WEB)/package.json
	@command -v npm >/dev/null || { echo "npm is needed for the dashboard chart library (apt-get install npm)"; exit 1; }
	cd $(WEB) && npm install --no-audit --no-fund --loglevel=error
	touch $(CHART)

up: setup
	$(BIN)/tickmesh up $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

bench: setup
	$(BIN)/python bench/pipeline.py $(ARGS)

clean:
	rm -rf $(VENV) $(WEB)/node_modules .tickmesh
