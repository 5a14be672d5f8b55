#!/usr/bin/env bash
# The decode kernels' measurements on a GPU machine (the device tool runs this in the repository root):
#   bash benchmarks/device_kernels.sh gemm   # the projections one by one (cuBLAS vs the skinny GEMM, tile sweep),
#                                            # the graphed forward by kernel class with each, its cuda tests
#   bash benchmarks/device_kernels.sh e2e    # benchmarks.bench at 64 and 8k prompts, cuBLAS vs the skinny GEMM
# Results go to $OUT (the device tool's folder), else out/device.
set -u
OUT=${OUT:-out/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
BENCH="python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 8192 --new-tokens 256 512
  --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 --transformers none"
case "${1:-gemm}" in
  gemm)
    timeout 240 python3 -m benchmarks.gemm --out "$OUT/gemm" --budget-s 100 2>&1 | tee "$OUT/gemm.log" | tail -3
    timeout 150 python3 -m benchmarks.profile_forward --split-k on --gemm cublas skinny cublas+pdl skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -12
    timeout 100 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_gemm.py 2>&1 | tee "$OUT/cuda-gemm.log" \
      | tail -4
    SDAR_PDL=1 timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_gemm.py tests/test_fused.py \
      tests/test_decode_attention.py tests/test_norm_rope.py 2>&1 | tee "$OUT/cuda-kernels-pdl.log" | tail -4 ;;
  e2e)
    timeout 240 $BENCH --out "$OUT/e2e-cublas" 2>&1 | tee "$OUT/e2e-cublas.log" | tail -6
    timeout 240 $BENCH --skinny-gemm --out "$OUT/e2e-skinny" 2>&1 | tee "$OUT/e2e-skinny.log" | tail -6 ;;
esac
