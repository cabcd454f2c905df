# Thin wrappers over scripts/setup.sh and the covidct CLI.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup test compose-test lint unit fuzz audit serve bench lock clean

setup:
	@bash scripts/setup.sh

test: setup lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# docker-compose.yml for real: images built, the CPU profile up on 127.0.0.1, answers equal to
# covidct serve's, a redeploy under load (tests/deploy/test_compose.py). Installs docker.io,
# docker-compose and debootstrap when root and missing; starts a private dockerd (data under
# /var/lib/covidct-docker, so images stay cached) unless it runs already, and stops it after.
compose-test: setup
	bash deploy/docker-host.sh install
	bash deploy/docker-host.sh run $(BIN)/python -m pytest -p no:cacheprovider -s -m compose \
		tests/deploy/test_compose.py $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -n 2 -m "not slow and not integration" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Property tests and the OpenAPI-driven API fuzzing with fresh random examples, many more than
# make test runs (5000 per property or operation). The API run needs the CI-sized model: it
# trains it (about 8 min on 2 cores) unless COVIDCT_TEST_CI_RUN names a finished run.
fuzz: setup
	COVIDCT_FUZZ=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/covidct/preprocessing/test_properties.py tests/integration/test_api_fuzz.py

# Known vulnerabilities in every locked package (pip-audit; PyPI's per-release JSON or OSV).
# --strict: a package it cannot check fails the run. Accepted findings: one ID per line in
# audit-accepted.txt, with the reason in a comment (SECURITY.md).
audit: setup
	grep -v -e '^#' -e '^-e' requirements.lock > .audit-requirements.txt
	$(BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off \
		-r .audit-requirements.txt \
		$$(grep -v '^#' audit-accepted.txt | cut -d' ' -f1 | sed 's/^/--ignore-vuln /')

serve: setup
	$(BIN)/covidct serve

# Every benchmark (about 55 min on 2 cores, plus about 2 h for bench quality's real-CT runs the
# first time; trains and exports the DenseNet201 it needs
# once, into runs/bench), then BENCHMARKS.md from bench/results/.
bench: setup
	$(BIN)/covidct bench all

lock:
	$(BIN)/pip freeze --exclude-editable | { echo "# Pinned versions of every Python package in .venv (pip constraints file)."; echo "# Regenerate: make lock  (after changing dependencies in pyproject.toml)."; cat; } > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
