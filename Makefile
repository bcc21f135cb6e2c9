# Every target creates or reuses .venv by itself, so a fresh clone needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The Flask sdist ships the tutorial app (flaskr) that tests/test_flaskr.py runs.
	$(BIN)/python -m pip download --quiet --no-binary :all: --no-deps -d $(VENV)/sdists \
		"flask==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("flask"))')"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# A suite that collected no tests is not green: pytest's exit code 5 fails here too.
test: lint
	$(BIN)/pytest

# make demo APP=starlette (or fastapi) runs the ASGI example instead of Flask.
demo: $(STAMP)
	$(BIN)/python -m examples.demo $(APP)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
