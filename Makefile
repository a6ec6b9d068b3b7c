# learnq: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= plots,data,dev,sweep,onnx
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test test-slow bench bench-env bench-peers-smoke lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/learnq demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# `make bench BENCH_ARGS=--quick`: every benchmark's smoke mode (results under $TMPDIR/learnq-bench-quick).
# The peer libraries (diffq for the side-by-side runs; brevitas, nncf, torchao, optimum-quanto, coremltools,
# aimet-torch, onnxruntime's quantizer) live in their own venv, .venv-bench, never in .venv: created/updated by
# benchmarks/envs/setup_bench_env.sh (pinned versions, torch 2.13.0 first; a no-op when up to date).
bench-env:
	PYTHON=$(PYTHON) bash benchmarks/envs/setup_bench_env.sh

# Proves every peer in .venv-bench runs what the side-by-side benchmarks need (benchmarks/envs/README.md).
bench-peers-smoke: bench-env
	PYTHONPATH=. .venv-bench/bin/python benchmarks/peers_smoke.py

bench: $(STAMP) bench-env
	$(PY) -m pip install -q -e '.[all]'
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check learnq tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
