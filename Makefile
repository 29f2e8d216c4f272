# One command to set up and run the demo (`make demo`), one to set up and run the tests (`make test`).
VENV ?= .venv
PYTHON ?= python3

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch first, pinned: this picks the CPU build where one is on disk and never an unpinned CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/vimpo-bench train

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/bench_algorithms.py
	$(VENV)/bin/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
