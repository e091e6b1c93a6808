# Two commands for a newcomer: `make up` and `make test`. Both set up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := api/web
CHART := $(WEB)/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js

.PHONY: up test bench setup browser triton-runtime clean

setup: $(STAMP) $(CHART) triton-runtime

# The venv tritonserver runs the models in (NumPy < 2, see triton_models/requirements.txt);
# `tickmesh triton prepare` rebuilds it only when the requirements changed.
triton-runtime: $(STAMP)
	@$(BIN)/tickmesh triton prepare

# Browser tests drive Debian's chromium headless; install it once when missing (needs root).
browser:
	@command -v chromium >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "browser tests need Debian's chromium: sudo apt-get install -y chromium"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

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
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $(CHART)

up: setup
	$(BIN)/tickmesh up $(ARGS)

test: setup browser
	$(BIN)/python -m pytest $(ARGS)

bench: setup
	$(BIN)/python bench/pipeline.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-triton $(WEB)/node_modules .tickmesh
