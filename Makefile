# loraplex — `make demo` and `make test` work on a fresh clone: they install what is missing first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraplex-installed
PYTEST_ARGS ?=

.PHONY: install demo test up down status bench bench-scale bench-latency loadtest gpu-check clean

$(STAMP): pyproject.toml scripts/install.sh serving/vllm_plugin/lora_rows.cpp
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: install          ## build the demo model/adapters if missing, start the stack, show each tenant's answers
	$(PY) -m loraplex.cli demo

test: install          ## the whole test suite against real SeaweedFS and a real vLLM engine
	$(PY) -m pytest $(PYTEST_ARGS)

up: install            ## start the embedded stack in the background (returns when /ready is 200)
	$(PY) -m loraplex.cli up

down: install          ## stop the embedded stack
	$(PY) -m loraplex.cli down

status: install        ## show the embedded stack
	$(PY) -m loraplex.cli status

BENCH_OUT ?= var/bench/hotswap
BENCH_ARGS ?=
bench: install         ## hot-swap vs separate-model benchmark (N=2,4,8) into $(BENCH_OUT); updates docs/benchmarks.md
	$(PY) -m loraplex.cli bench hotswap --out $(BENCH_OUT) --docs docs/benchmarks.md $(BENCH_ARGS)

bench-scale: install   ## one engine, 8/100/1000 adapters of 100 tenants into var/bench/scale; updates docs/benchmarks.md
	$(PY) -m loraplex.cli bench scale --out var/bench/scale --docs docs/benchmarks.md $(BENCH_ARGS)

bench-latency: install ## Zipf at 60%, flood, gateway hop, engine ratios into var/bench/latency; updates docs/benchmarks.md
	$(PY) -m loraplex.cli bench latency --out var/bench/latency --docs docs/benchmarks.md $(BENCH_ARGS)

LOADTEST_TIME ?= 30s
LOADTEST_RATE ?= 2
LOADTEST_ARGS ?=
loadtest: install      ## locust, headless, against the running stack (var/stack.json); CSVs in var/loadtest/
	@test -f var/stack.json || { echo "no var/stack.json: start the stack first (make demo, or make up and create tenants)" >&2; exit 2; }
	mkdir -p var/loadtest
	LORAPLEX_LOADTEST_RATE=$(LOADTEST_RATE) $(VENV)/bin/locust -f loadtest/locustfile.py --headless \
	  -u $$($(PY) -c "import json; print(max(1, len(json.load(open('var/stack.json')).get('tenants') or {})))") -r 100 \
	  -t $(LOADTEST_TIME) --csv var/loadtest/locust --only-summary $(LOADTEST_ARGS)

# Not behind `install`: the lent GPU machines have torch/transformers/peft but no network and no vLLM.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=
gpu-check:             ## on a CUDA host: train LoRA + QLoRA on a tiny base, gate and probe them (docs/operations.md)
	$(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:                 ## stop the stack and remove var/ (models, data, keys) — the venv stays
	-$(PY) -m loraplex.cli down
	rm -rf var
