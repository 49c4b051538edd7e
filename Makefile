# Every target builds .venv first, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench bench-models fuzz stress clean

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
	$(BIN)/mypy src/nvcim/config src/nvcim/chip src/nvcim/devices src/nvcim/mapping src/nvcim/circuits src/nvcim/evaluation src/nvcim/methods src/nvcim/experiments src/nvcim/arith.py src/nvcim/registry.py

# Bounded reliability runs (docs/reliability.md): FUZZ_SECONDS, STRESS_KILLS, STRESS_ROUNDS, STRESS_RUNNERS.
fuzz: $(STAMP)
	FUZZ_SECONDS=$${FUZZ_SECONDS:-240} timeout 900 $(BIN)/python tests/fuzz_main.py

stress: $(STAMP)
	timeout 1800 $(BIN)/python tests/stress_main.py

# the core throughput (LeNet-5, 100 chips), then the real workloads (bench-models)
bench: $(STAMP) bench-models
	$(BIN)/python bench/bench_core.py

# the real workloads of issue #15 (about 35 minutes on 2 cores): Monte Carlo per model, a vat epoch against
# plain training, 1000 ResNet-18 chips, the tiled-product bound, Ray 1 -> 2 workers
bench-models: $(STAMP)
	$(BIN)/python bench/bench_models.py --models vit lenet5 --tag _vit_lenet
	$(BIN)/python bench/bench_models.py --models resnet18 --images 30 --batch 10 --tag _resnet18
	$(BIN)/python bench/bench_program.py
	$(BIN)/python bench/bench_tiles.py
	$(BIN)/python bench/bench_convert.py
	$(BIN)/python bench/bench_training.py --model lenet5
	$(BIN)/python bench/bench_training.py --model resnet --images 8192
	$(BIN)/python bench/bench_ray.py

clean:
	rm -rf $(VENV) out
