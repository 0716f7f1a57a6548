# loraplex — `make demo` and `make test` work on a fresh clone: they install what is missing first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraplex-installed
PYTEST_ARGS ?=

.PHONY: install demo test up down status bench loadtest clean

$(STAMP): pyproject.toml scripts/install.sh
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

bench loadtest:
	@echo "'make $@' arrives with issue 7 (hot-swap vs separate-model benchmark); not built yet." >&2; exit 2

clean:                 ## stop the stack and remove var/ (models, data, keys) — the venv stays
	-$(PY) -m loraplex.cli down
	rm -rf var
