# Every target builds .venv first, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench fuzz stress clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nvcim demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src/nvcim/config src/nvcim/chip src/nvcim/devices src/nvcim/mapping src/nvcim/circuits src/nvcim/evaluation src/nvcim/methods src/nvcim/experiments

# Bounded reliability runs (docs/reliability.md): FUZZ_SECONDS, STRESS_KILLS, STRESS_ROUNDS, STRESS_RUNNERS.
fuzz: $(STAMP)
	FUZZ_SECONDS=$${FUZZ_SECONDS:-240} timeout 900 $(BIN)/python tests/fuzz_main.py

stress: $(STAMP)
	timeout 1800 $(BIN)/python tests/stress_main.py

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py

clean:
	rm -rf $(VENV) out
