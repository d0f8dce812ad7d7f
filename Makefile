# Two targets a user needs: `make run` (the main job on the built-in data) and `make test`.
# Each sets up its own virtual environment from the package registry on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint bench bench-grpo bench-tunix clean

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

# Tunix is no geojax dependency: its own venv (geojax + the tunix extra, the core's jax pins)
TUNIX_VENV ?= .venv-tunix
$(TUNIX_VENV)/.ready: setup.py
	$(PYTHON) -m venv $(TUNIX_VENV)
	$(TUNIX_VENV)/bin/python -m pip install -q -e ".[tunix]"
	touch $@

bench: $(VENV)/.bench $(TUNIX_VENV)/.ready
	for s in scripts/bench_*.py; do $(PY) $$s || exit 1; done

# geojax's GRPO step vs TRL's (BENCHMARKS.md: GRPO); ARGS="--threads 2" for both sides at 2 threads
bench-grpo: $(VENV)/.bench
	$(PY) scripts/bench_grpo.py $(ARGS)

# geojax's GRPO step vs Tunix's on a toy text decoder (BENCHMARKS.md: GRPO); the measured processes run in TUNIX_VENV
bench-tunix: $(VENV)/.bench $(TUNIX_VENV)/.ready
	$(PY) scripts/bench_tunix.py --python $(TUNIX_VENV)/bin/python $(ARGS)

clean:
	rm -rf $(VENV) $(TUNIX_VENV) runs
