# Two commands on a fresh machine:  `make serve`  and  `make test`.
# Everything installs into ./.venv from pyproject.toml (pinned).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup serve test labs docs docs-serve bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(VENV)/bin/reference-server --check --threads 1   # a build that cannot run here says so now
	touch $(STAMP)

setup: $(STAMP)           ## create .venv and install everything (llama-cpp-python compiles: ~6 min once)

serve: setup              ## run the reference server on the embedded SmolLM2-135M model
	$(VENV)/bin/reference-server $(ARGS)

test: setup               ## run the whole test suite (server, schemas, labs, docs)
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

labs: setup               ## open JupyterLab at the repository root
	$(VENV)/bin/jupyter lab

docs: setup               ## build the course site into ./site
	$(VENV)/bin/mkdocs build --strict

docs-serve: setup
	$(VENV)/bin/mkdocs serve

bench: setup              ## benchmark: in-process vs reference server vs llama-cpp-python's server
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	rm -rf $(VENV) site .pytest_cache
