# reidflow: `make demo` runs the embedded default pipeline, `make test` runs the test suite.
# Both create the virtualenv on first use (idempotent: re-running installs nothing new).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.reidflow-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: demo test test-unit bench lint venv clean-demo

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "reidflow needs Python 3.11")'
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[orchestrators,dev]'
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	VENV=$(VENV) bash scripts/demo.sh

test: $(STAMP)
	@.ci/system-deps >/dev/null 2>&1 || echo "note: could not install prometheus-pushgateway (needs root or sudo);" \
		"its integration test is skipped outside CI"
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

LINT_PATHS := src tests bench components pipelines

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean-demo:
	rm -rf artifacts data/synth
