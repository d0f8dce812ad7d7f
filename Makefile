# Two targets a user needs: `make run` (the main job on the built-in data) and `make test`.
# Each sets up its own virtual environment from the package registry on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint bench bench-grpo clean

$(VENV)/.core: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core setup.py
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: $(VENV)/.core
	$(PY) -m geojax.train --config=configs/default.py $(ARGS)

test: $(VENV)/.test
	$(PY) -m pytest -n 2 -q tests $(ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check --no-cache .

$(VENV)/.bench: $(VENV)/.test setup.py
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

bench: $(VENV)/.bench
	for s in scripts/bench_*.py; do $(PY) $$s || exit 1; done

# geojax's GRPO step vs TRL's (BENCHMARKS.md: GRPO); ARGS="--threads 2" for both sides at 2 threads
bench-grpo: $(VENV)/.bench
	$(PY) scripts/bench_grpo.py $(ARGS)

clean:
	rm -rf $(VENV) runs
