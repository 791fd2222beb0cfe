# One venv for everything; every target installs what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: venv demo demo-serve test bench bench-capacity lint fmt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/guardrail demo

demo-serve: $(STAMP)  # the demo, then its server keeps running (links work) until Ctrl-C; PORT=8080 to choose
	$(BIN)/guardrail demo --serve $(if $(PORT),--port $(PORT))

test: $(STAMP)
	bash scripts/test-deps.sh
	$(BIN)/ruff check guardrail tests bench
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(BENCH_STAMP)  # the judge table and the trade-off picture (~4 min), then the service-level table (long: see bench/README.md)
	$(BIN)/python -m bench.judge_bench
	$(BIN)/python -m bench.service_bench

bench-capacity: $(STAMP)
	$(BIN)/python -m bench.capacity_bench

lint: $(STAMP)
	$(BIN)/ruff check guardrail tests bench

fmt: $(STAMP)
	$(BIN)/ruff format guardrail tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
