# The two commands are `make run` and `make test`; everything else is a step they call.
# `make check` is the fast loop while working: lint and the tests that neither start a server process nor take long.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.regionlock-installed
SOURCES := pyproject.toml setup.py $(wildcard core/*.pyx core/*.pxd core/*.h core/*.py service/*.pyx service/*/*.pyx service/*/*/*.pyx proto/regionlock/*/*.proto proto/regionlock/*/*/*.proto)
export REGIONLOCK_REQUIRE_EXTENSION := 1
# pytest-xdist workers (one per core); a test file runs whole on one worker, so its module fixtures stay shared.
# `make test PYTEST_WORKERS=0` runs the suite in one process.
PYTEST_WORKERS ?= auto
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: run test check lint pytest pytest-fast install bench clean

run: $(STAMP)
	$(BIN)/regionlock serve

test: $(STAMP) lint pytest

# lint is every static check (whatever joins it, e.g. a type checker, joins check too)
check: $(STAMP) lint pytest-fast

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py  # mypy (strict, pyproject.toml) and stubtest of the compiled modules' .pyi

pytest: $(STAMP)
	$(BIN)/pytest -W error $(XDIST)

# all but the e2e tests (tests/e2e/ and the load test: serve processes, workers, replicas, the wheel) and the
# slow ones (seconds each: thousands of opens of a 64 MiB file, a million GeoLite2 lookups, maximum-size bulks)
pytest-fast: $(STAMP)
	$(BIN)/pytest -q -W error $(XDIST) -m "not e2e and not slow"

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77" wheel "Cython>=3.0,<4" "grpcio-tools==1.85.1" "googleapis-common-protos>=1.63"

# editable install: the Cython extensions are compiled in place, the gRPC code generated into gen/
$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/pip install --quiet --no-build-isolation -e '.[test,demo]'
	touch $@

bench: $(STAMP)
	command -v h2load >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; } || echo "note: h2load (nghttp2-client) could not be installed: the service benchmark is skipped"
	command -v nghttpd >/dev/null 2>&1 || [ -x /usr/sbin/nghttpd ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-server; } || echo "note: nghttpd (nghttp2-server) could not be installed: the fixed-load floor is skipped"
	$(BIN)/pip install --quiet -e ".[bench]" || echo "note: some benchmark comparisons are unavailable"
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) gen build dist *.egg-info core/*.c core/*.so service/*.c service/*.so service/*/*/*.c service/*/*/*.so service/*/*/*.html
