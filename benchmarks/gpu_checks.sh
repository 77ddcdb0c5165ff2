#!/usr/bin/env bash
# The checks that need a GPU, as one command for a GPU machine. This repository's CPUs cannot run them, and CI has no GPU.
#   1. build unified_vision._C with its CUDA kernels (sm_90 by default);
#   2. run the CUDA tests: tests/test_ops.py (float16/bfloat16/float32/float64 on the GPU against the reference) and
#      tests/test_cuda.py (CUDA against CPU kernels, opcheck on CUDA, UniHead outputs GPU vs CPU, AMP training);
#   3. UniHead against each framework's own head at the `coco` profile's scale on the GPU
#      -> benchmarks/results/heads_coco_cuda.md (the paper's Table 5 overhead);
#   4. the CUDA kernels against their PyTorch references on the GPU -> benchmarks/results/ops_cuda.md.
# Each step has its own time limit and the later steps run even if an earlier test fails. The logs and the two tables
# are also copied to OUTPUT_DIR.
# Needs: a CUDA GPU, nvcc, torch/torchvision/timm/pycocotools, and the generated `mini` data (`dvc repro data`).
# Usage: bash benchmarks/gpu_checks.sh [OUTPUT_DIR]
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg UV_FORCE_CUDA=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
step() { echo "== $1 ($(date -u +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"

build() {   # build the extension in place with the compilers the environment names (CC, CXX)
  rm -rf build unified_vision/_C.*.so
  if ! timeout 300 $PY setup.py build_ext --inplace >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log"; echo "build failed"; exit 1
  fi
}
# A failed TORCH_CHECK must reach Python as a RuntimeError. On one GPU image here, the default compiler
# (CXX=/opt/gcc/bin/g++, a wrapper around g++ 13.3) built an extension that crashed (SIGSEGV) while formatting the
# first such message, inside stream code compiled into the extension; the system's /usr/bin/g++ (the same g++ 13.3,
# libstdc++ linked as a shared library) did not. So: probe, and rebuild with the system compiler if the probe crashes.
probe='import torch
from unified_vision import _C
try:
    _C.point_sample_forward(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2))
except RuntimeError as e:
    print("a C++ check reaches Python as RuntimeError:", str(e).splitlines()[0])'

step "build the extension with CUDA kernels (CC=${CC:-default} CXX=${CXX:-default})"
build
if ! $PY -c "$probe"; then
  echo "the extension crashes on a C++ error message; rebuilding with CC=/usr/bin/gcc CXX=/usr/bin/g++"
  [ -x /usr/bin/g++ ] || exit 1
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
  build
  $PY -c "$probe" || exit 1
fi
$PY -c "from unified_vision import ops; assert ops._C_HAS_CUDA, 'no CUDA kernels'; print('unified_vision._C has its CUDA kernels')" || exit 1

step "CUDA tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -ra tests/test_cuda.py tests/test_ops.py 2>&1 | tee "$out/pytest.log" | tail -30
tests=${PIPESTATUS[0]}

step "UniHead against each framework's head on the GPU (coco scale)"
timeout 240 $PY benchmarks/bench_heads.py --profile coco --device cuda \
  --frameworks faster_rcnn cascade_rcnn mask_rcnn atss fcos 2>&1 | tee "$out/bench_heads.log" | grep -v "^ *$" | tail -8
cp benchmarks/results/heads_coco_cuda.md "$out/" 2>/dev/null

step "CUDA kernels against their references"
timeout 150 $PY benchmarks/bench_ops.py --device cuda --quick 2>&1 | tee "$out/bench_ops.log" | tail -14
cp benchmarks/results/ops_cuda.md "$out/" 2>/dev/null

step "done"
exit "$tests"
