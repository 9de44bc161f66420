# The two commands a fresh clone needs (see README.md):
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run ruff and the test suite (which builds the docs too)
#   make docs   the API reference and user guide in docs/_build/html (warnings are errors)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= hesskit-demo
# Two cores: torch on both, NumPy/SciPy's OpenBLAS on one, so that they do not fight.
# MKL_NUM_THREADS stays unset: torch takes it as its own thread count (=1 made every run
# single-threaded).
export OMP_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup demo test lint docs bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hesskit demo --out $(OUT) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest

# Sphinx (autodoc + napoleon + MyST): docs/conf.py says why; -E rebuilds every page.
docs: $(STAMP)
	$(BIN)/python -m sphinx -b html -E -W --keep-going docs docs/_build/html
	@echo "open docs/_build/html/index.html"

# Every benchmark, one after another (about 25 minutes on 2 cores; run on a quiet machine;
# hf_fidelity.py runs on 1 thread, about 5 minutes).
# Each sets its own thread counts and writes JSON to benchmarks/results/. The peers they
# compare against (curvlinops, BackPACK) are the `bench` extra, installed with the torch pin.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	# BackPACK pulls in torchvision, which does not import beside the pinned torch and then
	# breaks `import transformers` (the Hugging Face tests); BackPACK runs without it.
	$(BIN)/python -m pip uninstall --quiet --yes torchvision
	$(BIN)/python benchmarks/dense.py
	$(BIN)/python benchmarks/products.py
	$(BIN)/python benchmarks/architectures.py
	$(BIN)/python benchmarks/eigen.py
	$(BIN)/python benchmarks/diagonal.py
	$(BIN)/python benchmarks/optimizers.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/hf_step.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/hf_fidelity.py

clean:
	rm -rf $(VENV) $(OUT) docs/_build
