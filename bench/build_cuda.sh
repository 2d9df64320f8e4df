#!/usr/bin/env bash
# Builds a CUDA-enabled ferroformer on a machine without a CUDA toolkit, for carrying to a GPU
# machine (sm_90 by default): nvcc, headers and the CUDA libraries come from PyPI wheels; the
# driver library is resolved at run time on the GPU machine. Output: .gpu/ferroformer (stripped).
# The wheel versions must not be newer than the GPU machine's driver (13.0 for driver 580).
#   bench/build_cuda.sh && run bench/gpu_check.sh on the GPU machine (carrying .gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
V=${CUDA_WHEELS:-13.0}
VENV=${VENV:-/tmp/cudavenv}
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "nvidia-cuda-nvcc==$V.*" "nvidia-nvvm==$V.*" "nvidia-cuda-crt==$V.*" \
  "nvidia-cuda-runtime==$V.*" "nvidia-cuda-cccl==$V.*" "nvidia-cublas==$V.*" "nvidia-cuda-nvrtc==$V.*" nvidia-curand
C=$(echo "$VENV"/lib/python3*/site-packages/nvidia/cu13)
STUB=/tmp/cudastub
mkdir -p "$STUB"
# An empty libcuda.so only satisfies the linker; the real driver library is loaded on the GPU machine.
echo "" > "$STUB/empty.c"
gcc -shared -fPIC -o "$STUB/libcuda.so" -Wl,-soname,libcuda.so.1 "$STUB/empty.c"
for l in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "$C/lib/lib$l" "$STUB/lib${l%%.so*}.so"
done
export PATH="$C/bin:$PATH" CUDA_ROOT="$C" CUDA_PATH="$C" CUDA_HOME="$C" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH="$STUB:$C/lib" CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-cuda}
export RUSTFLAGS="-C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files -C link-arg=-L$STUB"
cargo build --release --features cuda
mkdir -p .gpu
strip -o .gpu/ferroformer "$CARGO_TARGET_DIR/release/ferroformer"
ls -la .gpu/ferroformer
