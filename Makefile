# One command to set up and run the demo (`make demo`), one to set up and run the tests (`make test`).
VENV ?= .venv
PYTHON ?= python3

.PHONY: setup demo test bench reports clean

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
	$(VENV)/bin/python benchmarks/bench_perf.py
	$(VENV)/bin/python benchmarks/bench_lora.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Every results page rebuilt from its committed export (reports/NAME/export), no MLflow store needed; on a
# clone this leaves every reports/*.md byte-identical (tests/test_report_export.py checks one page).
reports: setup
	@set -e; for manifest in reports/*/export/export.json; do \
	  page=$${manifest%/export/export.json}; \
	  reading=""; if [ -f $$page.reading.md ]; then reading="--reading $$page.reading.md"; fi; \
	  $(VENV)/bin/vimpo-bench report --from-export $$page/export --format markdown --out $$page.md $$reading; \
	done
