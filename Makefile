# Two entry points on a fresh machine: `make demo` and `make test`. Each creates the
# virtualenv and installs everything it needs. torch is installed first, pinned
# (TORCH_SPEC), so the project's own `torch>=` requirement never pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tpc-installed
DEMO_DIR ?= build/llava-tiny

.PHONY: setup demo test lint format clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tpc compile llava-tiny --ratio 0.89 --target ort -o $(DEMO_DIR) --force
	$(VENV)/bin/tpc run $(DEMO_DIR) --image examples/assets/demo.png --prompt "What is in the picture?" --max-new-tokens 16
	@echo "(llava-tiny has seeded random weights: the text above is meaningless by design; the graph, the tokens it keeps and its speed are the point)"

test: $(STAMP) lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf build .pytest_cache

.PHONY: bench
bench: $(STAMP)
	$(PY) benchmarks/run_bench.py --model llava-bench
	$(PY) benchmarks/methods_bench.py --model llava-bench
	$(PY) benchmarks/divprune_loop.py --widths 64,1536,4096 --keep 64 --output BENCHMARKS.md
	$(PY) benchmarks/cdpruner_loop.py --write
	$(PY) benchmarks/in_vit_bench.py --layers 4,8,12,16,22
	$(PY) benchmarks/llm_bench.py
	$(PY) benchmarks/precision_bench.py
	$(PY) benchmarks/genai_int4_bench.py --write
	$(PY) benchmarks/real_size_bench.py --targets onnx,trt   # ~40 GB of disk: a 7 B-geometry checkpoint and its graphs
	$(PY) benchmarks/cli_start_bench.py
	$(PY) benchmarks/serving_bench.py --model llava-bench
