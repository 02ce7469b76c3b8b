# Lead scoring: `make demo` trains on the embedded data; `make test` runs the tests.
# Every target creates the project's .venv first when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install browser axe demo serve notebook test test-fast lint format bench screenshots clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}' \
		| sed -e 's/\$$(PORT)/$(PORT)/g' -e 's/\$$(NOTEBOOK_PORT)/$(NOTEBOOK_PORT)/g' -e 's/\$$(AXE_VERSION)/$(AXE_VERSION)/g'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the project with its dev tools

demo: $(STAMP)  ## Train on the embedded data, register the champion, score the open leads, show the best
	$(BIN)/leadscore demo
	@echo ""
	@echo "Next: start the scoring service with 'make serve' (http://127.0.0.1:3000, spec at /docs),"
	@echo "open the pages at http://127.0.0.1:3000/ui/digest (lead pages, model page),"
	@echo "and score a lead from a CRM: see 'Scoring from a CRM' in README.md."
	@echo "'.venv/bin/leadscore versions' lists the registered models; '.venv/bin/leadscore criteria' shows"
	@echo "what an edit of the rules in params.yaml would change (--apply puts it into service without retraining)."

PORT ?= 3000
NOTEBOOK_PORT ?= 8888

serve: $(STAMP)  ## Start the scoring service on http://127.0.0.1:$(PORT) (make serve PORT=3001 for another)
	$(BIN)/leadscore serve --port $(PORT)

browser:  ## Install Debian's chromium for the page tests when missing (needs root; skipped otherwise)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the page tests (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "could not install chromium: the page tests will skip"; \
	  else echo "no chromium and no root to install it: the page tests will skip"; fi; }

# axe-core: the accessibility rules (WCAG 2.1 AA) the page tests run in the browser.
AXE_VERSION := 4.14.1
AXE := .cache/axe/node_modules/axe-core/axe.min.js
axe:  ## Fetch axe-core $(AXE_VERSION) from the npm registry for the page tests when missing (skipped without npm)
	@[ -f $(AXE) ] || { command -v npm >/dev/null 2>&1 && \
	  npm install --silent --no-audit --no-fund --prefix .cache/axe axe-core@$(AXE_VERSION) >/dev/null 2>&1 && \
	  echo "axe-core $(AXE_VERSION) installed for the page tests" || \
	  echo "could not install axe-core with npm: the accessibility test will skip"; }

notebook: $(STAMP)  ## Open JupyterLab on notebooks/ (port $(NOTEBOOK_PORT)) in the project's environment (installs it on first use)
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,notebooks]'
	$(BIN)/jupyter lab --notebook-dir notebooks --port $(NOTEBOOK_PORT) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# The tests run in parallel, a test file a process (its services and stores stay within it), one
# process a core up to 4 (make test TEST_WORKERS=0 runs them in pytest's own process, as --pdb needs;
# nproc is asked without OMP_NUM_THREADS, which it would otherwise report). Most of their time is
# subprocesses importing the stack and servers answering, so two processes on 2 cores took
# 863 s where one took 1,270 s. OpenMP threads that find no work sleep instead of spinning:
# two LightGBM fits at once on 2 cores would otherwise steal each other's time.
TEST_WORKERS ?= $(shell n=$$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1); \
	[ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP) browser axe  ## Lint and run every test (slow end-to-end ones included), in parallel
	$(BIN)/ruff check .
	$(PYTEST)

test-fast: $(STAMP)  ## Run the tests not marked slow
	$(PYTEST) -m "not slow"

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

screenshots: $(STAMP) browser axe  ## Save the pages as PNG under docs/img (from the page tests)
	LEADSCORE_SCREENSHOTS=docs/img LEADSCORE_REQUIRE_BROWSER=1 $(BIN)/pytest -q tests/test_pages.py

bench: $(STAMP)  ## Run the benchmarks in bench/ (about an hour; prints figures, see BENCHMARKS.md)
	$(BIN)/python -m bench.bench_features
	$(BIN)/python -m bench.bench_quality
	$(BIN)/python -m bench.bench_scoring
	$(BIN)/python -m bench.bench_subscores
	$(BIN)/python -m bench.bench_engagement

clean:  ## Remove the environment, the local MLflow store and what the demo and scoring wrote under models/
	rm -rf $(VENV) .cache models/mlflow.db models/artifacts models/embedded models/quarantine models/scores models/reports models/demo-*
