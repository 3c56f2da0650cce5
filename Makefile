# The two commands of the README:  `make demo` (the main job) and `make test`.
# Both start from a fresh machine: they create .venv, install jaxdet with its native op, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NATIVE := $(wildcard xla_ops/csrc/*.* xla_ops/csrc/testing/* xla_ops/amx/csrc/*)
STAMP := $(VENV)/.jaxdet-installed
NEEDS_PY311 := 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else f"jaxdet needs Python 3.11 or newer (jax 0.10 does); $(PYTHON) is {sys.version.split()[0]}: run make PYTHON=python3.11 ...")'

.PHONY: install build test bench demo clean gpu-check

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || { $(PYTHON) -c $(NEEDS_PY311) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip "setuptools>=70" wheel "pybind11>=2.12" "jax>=0.10"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,proposals]"
	touch $@

install: $(STAMP)

# Rebuilds the native extensions in place when a C++/CUDA source changed (a no-op otherwise),
# with the CUDA kernels' host emulation that the tests run (tests/xla_ops/test_roi_pool_cuda_emulated.py)
# and the AMX tile kernel's (tests/xla_ops/amx/).
build: $(STAMP) $(NATIVE)
	JAXDET_CUDA_EMULATION=1 JAXDET_AMX_EMULATION=1 $(PY) setup.py -q build_ext --inplace

# The layers' contract (.importlinter) first: a wrong-way import fails in seconds.
test: build
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: build
	$(PY) experiments/bench_roi_pool.py

demo: build
	$(PY) -m jaxdet demo

# On a machine with an NVIDIA GPU and no network: builds the CUDA extension for it, runs the GPU
# tests and compute-sanitizer, measures against torchvision, in at most 8 minutes; results in
# experiments/results/gpu/ (or $$OUT). README: "Checking a GPU machine".
gpu-check:
	bash experiments/gpu_check.sh

clean:
	rm -rf build *.egg-info xla_ops/*.so xla_ops/amx/*.so
