# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, pinned and installed first: an open `torch` requirement may pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PIP_QUIET := --quiet --disable-pip-version-check
DEMO_DIR ?= ray-ltx-demo

.PHONY: install demo test test-full lint clean

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

# What CI runs: every fast test and the main end-to-end runs (train, resume, DeepSpeed, FSDP, restart, sweep, job
# submit, elastic, LTX-2). One torch thread per process: two cores shared by the driver, Ray's actors and workers.
TEST_ENV := PATH="$(abspath $(VENV))/bin:$$PATH" OMP_NUM_THREADS=1
test: install
	$(TEST_ENV) $(PY) -m pytest tests -m "not full"

# Everything, the extended end-to-end suite included (every fault, version, backend and tracker end to end).
test-full: install
	$(TEST_ENV) $(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check ray_ltx tests tuning benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
