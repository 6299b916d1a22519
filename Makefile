# dinof developer commands. `make test` is the one command a new user needs: it creates a venv in
# .venv (first run only, or when settings.ini/setup.py change), installs dinof with its dev extras,
# then runs every notebook test (nbdev_test, `slow`/`cuda` cells skipped) and `pytest tests/`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dinof-installed
# glibc allocator settings: fewer page faults for PyTorch's large temporaries on the CPU (up to 1/3 faster)
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296
export MALLOC_TOP_PAD_ ?= 536870912
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: mathjax install data quickstart bench bench-report test test-nbs test-py test-slow check-sync export clean-nbs readme run-nbs docs-check

$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

install: $(STAMP) data

# Fashion-MNIST ships in Debian's dataset-fashion-mnist; installed here when missing (needs root and apt)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@test -f $(FMNIST) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; \
	  else echo "Fashion-MNIST not found: install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist)"; fi; }

# the main job: set-up (first run only), then train, sample and score the Fashion-MNIST DiNof in ./quickstart (~10 min on 2 cores)
# OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads sleep instead of spinning while they wait, which keeps the job's speed
# when another process shares the cores (spinning threads made a 2-thread job up to 20x slower here)
quickstart: $(STAMP) data
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dinof quickstart --workdir quickstart

# the Fashion-MNIST study (hours on 2 cores; resumable: run it again to continue), then its summary and timing
bench: $(STAMP) data
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dinof bench quality --root bench/fashion_mnist --compile
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dinof bench speed --root bench/fashion_mnist
	$(MAKE) bench-report

# the front page's table, summary and figures from the study's committed cells (tools/bench_report.py)
bench-report: $(STAMP)
	$(BIN)/python tools/bench_report.py

test: test-nbs test-py

# two notebooks at a time, one thread each: two workers with two threads apiece oversubscribe two cores (up to 10x slower)
test-nbs: $(STAMP) data
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

test-py: $(STAMP) data
	$(BIN)/python -m pytest -q tests

# the long checks CI skips: notebook cells flagged `slow` and pytest tests marked `slow`
test-slow: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --flags slow
	$(BIN)/python -m pytest -q --runslow tests

# fails if the notebooks carry outputs' metadata or dinof/ is out of sync with them
check-sync: $(STAMP)
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
	$(BIN)/python tools/make_readme.py
	@if [ -n "$$(git status --porcelain -- nbs dinof README.md)" ]; then \
	  echo "nbdev_clean / nbdev_export changed files (commit clean notebooks and the exported library):"; \
	  git status --short -- nbs dinof README.md; exit 1; fi

export: $(STAMP)
	$(BIN)/nbdev_export

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean

readme: $(STAMP)
	$(BIN)/python tools/make_readme.py

# execute notebooks in place so the docs carry their outputs and figures (NB=nbs/01_sde.ipynb for one)
NB ?= $(filter-out nbs/_%,$(wildcard nbs/[0-9i]*.ipynb))
run-nbs: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 $(NB)
	for f in $(NB); do $(BIN)/nbdev_clean --fname $$f; done
	$(BIN)/nbdev_export

# what of the docs pipeline runs without Quarto: nbdev's notebook processing (executes show_doc/import/export cells
# of every notebook into _proc/), then tools/check_docs.py renders each processed notebook to HTML by nbconvert (into
# _proc/html/, figures embedded) and fails when a page, a figure of the index or an exported symbol's show_doc is
# missing (tests/test_docs.py, run with the other tests, checks docstrings, show_doc cells, the sidebar, the Quarto
# config, and screenshots the rendered index with a headless Chromium when Debian's `chromium` is installed).
# Equations render offline from Debian's libjs-mathjax (installed here when missing, as root with apt); without it the
# HTML points to nbconvert's default MathJax CDN, which needs the internet.
MATHJAX := /usr/share/javascript/mathjax/MathJax.js
mathjax:
	@test -f $(MATHJAX) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq libjs-mathjax >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libjs-mathjax >/dev/null; }; \
	  else echo "MathJax not found: equations in _proc/html need the internet (sudo apt-get install libjs-mathjax for offline)"; fi; }

docs-check: $(STAMP) mathjax
	@rm -rf _proc; PATH="$(abspath $(BIN)):$$PATH" $(BIN)/nbdev_proc_nbs >/tmp/dinof-proc-nbs.log 2>&1 || \
	  { grep -v "^WARNING: Location" /tmp/dinof-proc-nbs.log | tail -40; echo "nbdev_proc_nbs failed"; exit 1; }
	$(BIN)/python tools/check_docs.py _proc
	@if test -f $(MATHJAX); then grep -L "file://$(MATHJAX)" _proc/html/*.html | grep . && \
	  { echo "docs-check: the pages above do not load the local MathJax"; exit 1; } || true; fi
