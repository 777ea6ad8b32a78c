# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, pinned and installed first: an open `torch` requirement may pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PIP_QUIET := --quiet --disable-pip-version-check
DEMO_DIR ?= ray-ltx-demo

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) "$(TORCH_SPEC)"
	$(PY) -m pip install $(PIP_QUIET) -e ".[test]"
	$(PY) -c "import torch, ray, diffusers, deepspeed, mlflow, av, ray_ltx"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ray-ltx demo --workdir $(DEMO_DIR)

test: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check ray_ltx tests tuning benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
