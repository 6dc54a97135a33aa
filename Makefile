# Two commands for a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# simglucose, the independent simulator medsim is checked against, pins gymnasium 0.29; it is
# installed without its pins beside the few packages it imports (see pyproject.toml).
SIMGLUCOSE := simglucose==0.2.11
SIMGLUCOSE_DEPS := "gym==0.9.4" "pathos>=0.3" "setuptools<80"

.PHONY: demo test lint bench reports clean

$(STAMP): pyproject.toml setup.py medsim-gymnasium.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet $(SIMGLUCOSE_DEPS)
	$(PY) -m pip install --quiet --no-deps $(SIMGLUCOSE)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medsim demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/simulate.py

reports: $(STAMP)
	$(VENV)/bin/medsim demo --out reports

clean:
	rm -rf $(VENV) .pytest_cache
