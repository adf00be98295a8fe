# Every target sets up .venv on first use, so a fresh machine needs only Python 3.11, pip and make.
# Dependencies come from the pinned, hashed lock files (requirements*.lock, made from
# pyproject.toml by `make lock`), then gridchain itself without dependencies: every install
# gets the same versions. `make demo` installs only what the programs need; the test extra
# (pytest, hypothesis, ...) comes with `make test`.
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
PIP := $(PY) -m pip install --quiet

.PHONY: test demo bench soak lock clean

$(PY):
	python3 -m venv $(VENV)

$(RUN_STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PIP) --require-hashes -r $(LOCK)
	$(PIP) --no-deps -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(TEST_LOCK) | $(PY)
	$(PIP) --require-hashes -r $(TEST_LOCK)
	$(PIP) --no-deps -e .
	touch $@ $(RUN_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q

demo: $(RUN_STAMP)
	$(VENV)/bin/gridchain demo

bench: $(TEST_STAMP)  # the benchmarks start nodes with the test suite's helpers
	$(PY) -m bench

soak: $(TEST_STAMP)
	$(PY) -m pytest -q -s -m soak -o addopts="" --timeout=1800

# After changing dependencies in pyproject.toml: pin them again (needs uv: pip install uv).
lock:
	uv pip compile pyproject.toml --generate-hashes --python-version 3.11 --no-config -o $(LOCK)
	uv pip compile pyproject.toml --extra test --generate-hashes --python-version 3.11 --no-config -o $(TEST_LOCK)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
