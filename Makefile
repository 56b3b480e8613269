# Set-up and the two everyday jobs. `make demo` runs the main job on the built-in simulator;
# `make test` installs the package and runs the default (fast) test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned to the CPU build that lies on this project's machines; a bare
# `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint test-slow bench clean

$(BIN)/spectrafm: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/spectrafm

install: $(BIN)/spectrafm

demo: install
	$(BIN)/spectrafm pipeline --config training/configs/quickstart.yaml --out runs/quickstart

# lint first: it takes seconds and names the file and line of a broken habit (see CONTRIBUTING.md)
test: install lint
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test-slow: install
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_simulator.py
	$(BIN)/python benchmarks/bench_dataset_memory.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
