# shenhe — two commands from a fresh clone: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Re-install only when the dependency declaration changes (stamp files make a second run fast).
SERVE_STAMP := $(VENV)/.stamp-serve
DEV_STAMP   := $(VENV)/.stamp-dev
BUNDLE ?= models/default
PORT   ?= 3000

.PHONY: serve test lint typecheck install-serve install-dev clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (shenhe needs Python 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[postgres]'
	@touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[train,eval,dev,postgres]'
	@touch $@ $(SERVE_STAMP)

install-serve: $(SERVE_STAMP)
install-dev: $(DEV_STAMP)

serve: $(SERVE_STAMP)
	$(VENV)/bin/shenhe serve --bundle $(BUNDLE) --port $(PORT)

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) scripts/typecheck.py
	$(VENV)/bin/pytest -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

# mypy over shenhe/, models/, training/, serving/, eval/, tests/, scripts/, bench/ ([tool.mypy] in pyproject.toml)
typecheck: $(DEV_STAMP)
	$(PY) scripts/typecheck.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
