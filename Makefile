# Quick start: `make demo` runs the main job, `make test` runs every test tier.
PY := .venv/bin/python

.PHONY: demo test test-unit test-integration test-container image bench lint clean

demo:
	EXTRAS=demo scripts/bootstrap.sh
	$(PY) -m torch_mme.cli demo

test:
	EXTRAS=test scripts/bootstrap.sh
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-unit:
	EXTRAS=test scripts/bootstrap.sh
	$(PY) -m pytest -q tests/unit

test-integration:
	EXTRAS=test scripts/bootstrap.sh
	$(PY) -m pytest -q tests/integration

test-container:
	EXTRAS=test scripts/bootstrap.sh
	$(PY) -m pytest -q -m container tests/container

image:
	./docker-build.sh

bench:
	EXTRAS=test scripts/bootstrap.sh
	$(PY) -m bench

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf .venv build *.egg-info .pytest_cache .ruff_cache
