# Every target creates .venv when it is missing (or older than pyproject.toml).
PYTHON ?= python3
# Compiled modules are kept (in __pycache__, ignored by git): every process the tests start
# (servers, workers, the command line) would otherwise compile the broker again.
unexport PYTHONDONTWRITEBYTECODE
VENV   := .venv
PY     := $(VENV)/bin/python
# What running needs, and what the tests need besides (`make run` installs only the first).
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed-test

# The console's French, compiled from its catalogue whenever the catalogue changes.
CATALOGUES := $(patsubst %.po,%.mo,$(wildcard broker/translations/*/LC_MESSAGES/messages.po))
# axe-core (accessibility checks run in the browser tests), from npm, pinned by its lock file.
AXE := tests/browser/node_modules/axe-core/axe.min.js

.PHONY: run test test-sqlite test-postgresql lint openapi bench bench-postgresql clean \
	system-packages \
	translations screenshots

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

%.mo: %.po $(RUN_STAMP)
	$(VENV)/bin/pybabel compile --statistics -i $< -o $@

$(AXE): tests/browser/package.json tests/browser/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing: the accessibility checks will be skipped"; fi

## run: migrate the embedded database, seed the demo consortium, serve API, console + worker
run: $(RUN_STAMP) $(CATALOGUES)
	$(VENV)/bin/broker serve

# The suites that mostly wait (for a browser, a server process, the demo's clouds, a fake
# cloud's timeout): they run beside the two database runs rather than inside the SQLite one.
WAITING := tests/browser tests/adapters tests/test_readme.py tests/test_serve.py
# Schemathesis fuzzes the API on PostgreSQL, the stricter database (lengths, integer ranges),
# beside the two database runs.
FUZZ := tests/test_schemathesis.py

## test: the whole suite on SQLite and on a throwaway PostgreSQL cluster (both at once, each
## printed whole when done); beside them the suites that mostly wait (the browser tests, the
## adapters against their fake clouds, the README and `broker serve`), the API fuzzed on
## PostgreSQL, then lint
test: $(STAMP) $(CATALOGUES) system-packages $(AXE)
	@logs=$$(mktemp -d); \
	echo "== running the suite on SQLite and on PostgreSQL (throwaway cluster), and beside them the waiting suites, the fuzzing and lint, in parallel =="; \
	( $(PY) -m pytest -q -p no:cacheprovider --durations=5 --db=sqlite $(WAITING) > $$logs/waiting.log 2>&1; \
	  waiting=$$?; $(PY) -m pytest -q -p no:cacheprovider --durations=5 --db=postgresql $(FUZZ) > $$logs/fuzz.log 2>&1; \
	  fuzz=$$?; $(MAKE) --no-print-directory lint > $$logs/lint.log 2>&1; \
	  lint=$$?; test $$waiting -eq 0 && test $$fuzz -eq 0 && test $$lint -eq 0 ) & side_pid=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider --durations=10 --db=sqlite $(addprefix --ignore=,$(WAITING) $(FUZZ)) > $$logs/sqlite.log 2>&1 & lite_pid=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider --durations=10 --db=postgresql $(addprefix --ignore=,$(WAITING) $(FUZZ)) > $$logs/postgresql.log 2>&1; pg=$$?; \
	wait $$lite_pid; lite=$$?; wait $$side_pid; side=$$?; \
	echo "== test suite on SQLite =="; cat $$logs/sqlite.log; \
	echo "== test suite on PostgreSQL (throwaway cluster) =="; cat $$logs/postgresql.log; \
	echo "== the waiting suites on SQLite: the console in Chromium, the adapters, the README, broker serve =="; cat $$logs/waiting.log; \
	echo "== the API fuzzed by schemathesis, on PostgreSQL =="; cat $$logs/fuzz.log; \
	echo "== lint (ruff, mypy), run once the others were done =="; cat $$logs/lint.log; \
	rm -rf $$logs; \
	test $$lite -eq 0 && test $$pg -eq 0 && test $$side -eq 0

## system-packages: Debian packages the tests need (PostgreSQL 15, redis-server, chromium and
## its driver, npm), when missing
system-packages:
	@bash .ci/system-packages

test-sqlite: $(STAMP)
	$(PY) -m pytest -q --db=sqlite

test-postgresql: $(STAMP)
	$(PY) -m pytest -q --db=postgresql

## lint: ruff and mypy on the application packages
lint: $(STAMP)
	$(VENV)/bin/ruff check broker providers billing tests bench migrations/env.py
	$(VENV)/bin/mypy

## translations: extract the console's strings and update the French catalogue (then translate
## what is new or fuzzy: tests/test_translations.py fails while a string has no French)
translations: $(RUN_STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -k _l -k lazy_gettext --no-location \
	  --sort-output -o broker/translations/messages.pot broker
	$(VENV)/bin/pybabel update -i broker/translations/messages.pot -d broker/translations \
	  --no-fuzzy-matching --ignore-obsolete

## screenshots: every main page in French and English, written to screenshots/ (ignored)
screenshots: $(STAMP) $(CATALOGUES) system-packages $(AXE)
	BROKER_SCREENSHOTS=screenshots $(PY) -m pytest -q -p no:cacheprovider tests/browser

## openapi: regenerate openapi.yaml from the code
openapi: $(RUN_STAMP)
	$(VENV)/bin/flask --app broker openapi write --format=yaml openapi.yaml

## bench: benchmark scripts (they print figures; nothing asserts timings)
bench: $(STAMP)
	@for script in bench/[!_]*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

## bench-postgresql: the same scripts on a throwaway PostgreSQL cluster, a database each
bench-postgresql: $(STAMP) system-packages
	@$(PY) bench/_on_postgresql.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
