#!/usr/bin/env bash
# The decode kernels' measurements on a GPU machine (the device tool runs this in the repository root):
#   bash benchmarks/device_kernels.sh tests-e2e  # every `cuda` test (PDL and the skinny GEMM on, the defaults), then
#                                                # benchmarks.bench at 64 and 8k prompts: cuBLAS without PDL vs defaults
#   bash benchmarks/device_kernels.sh gemm       # the projections one by one (cuBLAS vs the skinny GEMM, with and
#                                                # without PDL), the graphed forward by kernel class with each
#   bash benchmarks/device_kernels.sh readme     # the README's sweep (docs/performance.md's command), compiled
#                                                # transformers included, then the cold and warm start-up and the
#                                                # cold start with 4 precompile workers
#   bash benchmarks/device_kernels.sh moe        # every `cuda` test and the studio's tests on CUDA, the dense
#                                                # profile, then the MoE's expert gemv form (benchmarks.moe's layer,
#                                                # benchmarks.bench on 30B-A3B with and without it)
#   bash benchmarks/device_kernels.sh tiles      # every `cuda` test and the studio's tests on CUDA, the gemv form's
#                                                # tile search (benchmarks.moe --gemv-tiles), the 30B-A3B forward with
#                                                # the tiles it found, the dense profile
#   bash benchmarks/device_kernels.sh goals [S]  # the performance goals' rows at batch 1 (64 and 8k prompts,
#                                                # compiled transformers), then the 30B-A3B forward's profile, in
#                                                # at most S seconds (default 370)
#   bash benchmarks/device_kernels.sh defaults [S]  # every `cuda` test and the studio's tests on CUDA, the goals' rows,
#                                                # the dense profile, the projections at 1 and 16 rows, within S s
#   bash benchmarks/device_kernels.sh defaults-studio [S]  # the same without the `cuda` suite
#   bash benchmarks/device_kernels.sh step       # every `cuda` test and the studio's tests on CUDA, then a decode
#                                                # beside threads running Python, its step graphed and op by op
#                                                # (benchmarks.crowded_decode)
#   bash benchmarks/device_kernels.sh fp8 [S]    # float8 weights, within S seconds: the `cuda` tests of the GEMM and
#                                                # float8 modules, `ar` and SDAR b16/4 at batch 1 in bf16 against
#                                                # --weights fp8, then the 1.7B's projections one by one (cuBLAS,
#                                                # ours in bf16 and over float8)
#   bash benchmarks/device_kernels.sh fp8-short [S]  # the float8 module's `cuda` tests, then the projections one by one
#   bash benchmarks/device_kernels.sh rows [S]   # the skinny GEMM for 1-64 rows (SDAR_SKINNY_ROWS=64) within S seconds:
#                                                # its kernels' `cuda` tests, the 1.7B's projections one by one (bf16
#                                                # and float8, tiles swept at 16 rows), the graphed forward's profile
#                                                # and `bench` at batch 1 and 4 with 1 row against 64, without the
#                                                # two folds (fusions silu_down, qk_rope), then float8
#   bash benchmarks/device_kernels.sh prefill [S]  # the prefill's modules' `cuda` tests and those of the split-K
#                                                # attention, the GEMM and the MoE kernels, benchmarks.prefill (the
#                                                # prompt's prefill: wall time against its kernels', the block-causal
#                                                # attention under the mask and without it (torch ops or in_block.py's
#                                                # kernel), op by op and as a padded graph), the goals' bench
#                                                # rows, benchmarks.first_request, within S s
#   bash benchmarks/device_kernels.sh folds [S]    # the dense folds not yet measured, within S s (default 560):
#                                                # the `cuda` tests of decode_attention.py and gemm.py, the dense
#                                                # forward's profile at 64 and 8k with and without the split-K merge in
#                                                # its split kernel (Kernels.merge_fold), then with q/k norm + RoPE
#                                                # in it too (Kernels.rope_in_attention), the profile at 64 with
#                                                # o_proj's and down's splits capped at 1 and 2 (SDAR_ADD_SPLITS), then
#                                                # the goals' bench rows with both attention folds
#   bash benchmarks/device_kernels.sh moe-folds [S]  # the MoE's, within S s (default 560): moe.py's `cuda` tests, the
#                                                # 30B-A3B rows with none of the switches, with all four (merge_fold,
#                                                # rope_in_attention, the layer's norm and add in its kernels:
#                                                # expert_fold, the routing in the router's GEMM: gate_route), with
#                                                # merge_fold and expert_fold only, then the profile with the MoE's three
#   bash benchmarks/device_kernels.sh all-folds [S]  # every fold not yet measured in one call, within S s (default
#                                                # 590): their `cuda` tests, the dense profile at 64 without and with
#                                                # the attention folds, the 30B-A3B rows without and with all four
#                                                # switches, the goals' bench rows with the attention folds
#   bash benchmarks/device_kernels.sh switched [S] # within S s (default 450): the `cuda` tests of the prefill paths
#                                                # switched on by default (graphed prefill, in-block kernel) and of
#                                                # the tests mended after the H200 run, whether the merge kernel's
#                                                # graph decode at 3 splits gives the plain path's tokens, the 30B-A3B
#                                                # rows with none, expert_fold, then expert_fold + gate_route, the
#                                                # 64-token rows with merge_fold alone
#   bash benchmarks/device_kernels.sh validate [S] # within S s (default 580): every `cuda` test on the defaults, a cold
#                                                # start with 4 workers, the dense profile at 64 without and with
#                                                # merge_fold, then with SDAR_ADD_SPLITS=2
#   bash benchmarks/device_kernels.sh persistent [S]  # within S s (default 580): the `cuda` tests of the persistent
#                                                # MLP, the switched paths and the GEMM with two tiles in flight
#                                                # (SDAR_GEMM_AHEAD=1), the dense profile at 64 without and with each
#                                                # (the MLP at 4, 2, 6 programs an SM), the projections one by one
#                                                # with one and two tiles in flight, the 64-token rows with each,
#                                                # the 30B-A3B rows without and with SDAR_MOE_EARLY=4
#   bash benchmarks/device_kernels.sh switched-short  # what a nearly spent session can afford of `switched`: the
#                                                # mended `cuda` tests, the 30B-A3B rows without and with
#                                                # expert_fold + gate_route (results flat in $OUT, no tar)
#   bash benchmarks/device_kernels.sh h200         # the goals' H200 run (the changed default paths' `cuda` tests, the
#                                                # README's sweep, the 30B-A3B rows, the dense and 30B-A3B
#                                                # profiles) within 590 s; elsewhere `prefill`
#   bash benchmarks/device_kernels.sh prefill-short  # the prefill's `cuda` tests, then bench's 64-token rows (~140 s)
#   bash benchmarks/device_kernels.sh coldstart  # the precompile tests and some kernels' on CUDA (CUDA_TESTS=""
#                                                # keeps the precompile ones only, =none none), then
#                                                # benchmarks.startup (cold,
#                                                # restart, cold with N workers, N stand-ins built alone) with
#                                                # N = 4 and 8 (WORKERS="4": 4 only): the first token and each
#                                                # worker's timeline (imports, context, the stand-in, each shape)
#   bash benchmarks/device_kernels.sh ops        # the GEMM and float8 `cuda` tests, then the goals' bench rows
#   bash benchmarks/device_kernels.sh fold       # the GEMM, fused, model and float8 (FOLD_TESTS="": not those)
#                                                # `cuda` tests, then the goals'
#                                                # bench rows with the norm fold (the default) and without, then the
#                                                # dense forward's profile at 64 with and without it
#   bash benchmarks/device_kernels.sh rest       # what `readme` leaves of the goals: the 30B-A3B rows, then the
#                                                # dense forward's profile at 64 and 8k and the 30B-A3B's at 64
#   bash benchmarks/device_kernels.sh added      # the dense forward's profile at 64 and 8k with what each kernel adds
#                                                # to its end, then the goals' `bench` rows without transformers
#   bash benchmarks/device_kernels.sh claims     # the precompile tests on CUDA, a cold start with 4 workers that
#                                                # divide the kernels by claims (benchmarks.startup --precompile 4),
#                                                # then `added`
# Results go to $OUT (the device tool's folder), else out/device; folders are packed in one .tgz (the device tool
# brings back a few files per call).
set -u
OUT=${OUT:-out/device}
mkdir -p "$OUT"
source benchmarks/device_site.sh  # gradio and plotly for the studio's cuda tests; gpu_tests
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
BENCH="python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 8192 --new-tokens 256 512
  --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 --transformers none"
MOE="python3 -m benchmarks.bench --arch sdar-30b-a3b --fuse --prompt-lengths 64 --new-tokens 64 --batch-sizes 1
  --block-lengths 16 --steps 4 --no-dynamic --repeats 2 --transformers none"
within() {  # within SECONDS COMMAND...: the command with at most SECONDS, fewer if less of LIMIT is left, skipped
  # under 15
  local cap=$(( $1 < LIMIT - SECONDS ? $1 : LIMIT - SECONDS )); shift
  if [ "$cap" -ge 15 ]; then timeout "$cap" "$@"; else echo "skipped (no time left): $*"; fi
}
goals_rows() {  # goals_rows LIMIT: the goals' bench rows (compiled transformers), then the 30B-A3B profile, ending
  # LIMIT seconds into the call
  local LIMIT=$1
  within $(((LIMIT - SECONDS) * 7 / 10)) python3 -m benchmarks.bench --arch sdar-1.7b --fuse \
    --prompt-lengths 64 8192 --new-tokens 256 512 --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 \
    --transformers compiled \
    --out "$OUT/goals" 2>&1 | tee "$OUT/goals.log" | tail -10
  within 600 python3 -m benchmarks.profile_forward --arch sdar-30b-a3b --split-k on \
    --contexts 64 --gemm skinny+pdl --out "$OUT/profile-moe" 2>&1 | tee "$OUT/profile-moe.log" | tail -5
}
case "${1:-gemm}" in
  tests-e2e)
    timeout 330 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/cuda-tests.log" | tail -5
    SDAR_PDL=0 timeout 120 $BENCH --no-skinny-gemm --out "$OUT/e2e-cublas" 2>&1 | tee "$OUT/e2e-cublas.log" | tail -6
    timeout 120 $BENCH --out "$OUT/e2e-default" 2>&1 | tee "$OUT/e2e-default.log" | tail -6
    tar czf "$OUT/e2e.tgz" -C "$OUT" e2e-cublas e2e-default && rm -r "$OUT/e2e-cublas" "$OUT/e2e-default" ;;
  fp8)  # $2: finish within this many seconds (default 300): the cuda tests, the end-to-end rows, the microbenchmark
    timeout $((${2:-300} / 4)) python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_fp8.py tests/test_gemm.py \
      > "$OUT/cuda-tests.log" 2>&1; tail -n 3 "$OUT/cuda-tests.log"
    FP8_BENCH="python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 --new-tokens 256
      --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 --transformers none"
    timeout $((${2:-300} / 3)) $FP8_BENCH --out "$OUT/bench-bf16" 2>&1 | tee "$OUT/bench-bf16.log" | tail -5
    timeout $((${2:-300} / 3)) $FP8_BENCH --weights fp8 --out "$OUT/bench-fp8" 2>&1 | tee "$OUT/bench-fp8.log" | tail -5
    timeout $((${2:-300} - SECONDS)) python3 -m benchmarks.gemm --out "$OUT/gemm-fp8" --archs sdar-1.7b --rows 1 16 \
      --sweep-rows 0 --fp8 2>&1 | tee "$OUT/gemm-fp8.log" | tail -12
    tar czf /tmp/fp8.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/fp8.tgz "$OUT/" ;;
  fp8-short)  # $2 seconds (default 130): the float8 module's `cuda` tests, then its projections one by one
    timeout 80 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_fp8.py > "$OUT/cuda-tests.log" 2>&1
    tail -n 3 "$OUT/cuda-tests.log"
    timeout $((${2:-130} - SECONDS)) python3 -m benchmarks.gemm --out "$OUT/gemm-fp8" --archs sdar-1.7b --rows 1 16 \
      --sweep-rows 0 --fp8 2>&1 | tee "$OUT/gemm-fp8.log" | tail -12 ;;
  rows)  # $2: finish within this many seconds (default 560); the most wanted rows first, each step cut to what is left
    LIMIT=${2:-560}
    SDAR_SKINNY_ROWS=64 within 160 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_gemm.py \
      tests/test_fp8.py tests/test_decode_attention.py tests/test_fused.py tests/test_norm_rope.py \
      > "$OUT/cuda-tests.log" 2>&1; tail -n 3 "$OUT/cuda-tests.log"
    ROWS_BENCH="python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 --new-tokens 256
      --block-lengths 16 --no-dynamic --repeats 2 --transformers none"
    for rows in 64 1; do
      SDAR_SKINNY_ROWS=$rows within 55 $ROWS_BENCH --batch-sizes 1 --out "$OUT/bench-rows$rows" 2>&1 \
        | tee "$OUT/bench-rows$rows.log" | tail -4
    done
    SDAR_SKINNY_ROWS=64 within 50 $ROWS_BENCH --batch-sizes 1 --weights fp8 --out "$OUT/bench-fp8" 2>&1 \
      | tee "$OUT/bench-fp8.log" | tail -4
    SDAR_SKINNY_ROWS=64 within 50 $ROWS_BENCH --batch-sizes 1 --fusions norm_rope cache_write add_norm silu_mul \
      routing --out "$OUT/bench-rows64-unfolded" 2>&1 | tee "$OUT/bench-rows64-unfolded.log" | tail -4
    for rows in 64 1; do
      SDAR_SKINNY_ROWS=$rows within 55 $ROWS_BENCH --batch-sizes 4 --out "$OUT/bench-rows$rows-batch4" 2>&1 \
        | tee "$OUT/bench-rows$rows-batch4.log" | tail -4
    done
    for rows in 1 64; do
      SDAR_SKINNY_ROWS=$rows within 40 python3 -m benchmarks.profile_forward --split-k on --contexts 64 \
        --gemm skinny+pdl --out "$OUT/profile-rows$rows" 2>&1 | tee "$OUT/profile-rows$rows.log" | tail -3
    done
    within 200 python3 -m benchmarks.gemm --out "$OUT/gemm" --archs sdar-1.7b --rows 1 4 16 64 --sweep-rows 16 \
      --budget-s 30 --fp8 2>&1 | tee "$OUT/gemm.log" | grep -v "^  " | tail -22
    tar czf /tmp/rows.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/rows.tgz "$OUT/" ;;
  gemm)
    timeout 200 python3 -m benchmarks.gemm --out "$OUT/gemm" --rows 1 4 16 --sweep-rows 1 --budget-s 60 2>&1 \
      | tee "$OUT/gemm.log" | tail -3
    timeout 150 python3 -m benchmarks.profile_forward --split-k on --gemm cublas skinny cublas+pdl skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -12
    tar czf "$OUT/gemm-profile.tgz" -C "$OUT" gemm profile && rm -r "$OUT/gemm" "$OUT/profile" ;;
  moe)  # the cuda suite and the studio's CUDA tests side by side, the dense forward's profile, then the MoE's gemv
        # form: one layer (gemv against the sorted kernels) and the 30B-A3B forward with and without it
    gpu_tests 260
    timeout 90 python3 -m benchmarks.profile_forward --split-k on --contexts 64 --gemm cublas+pdl skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -6
    timeout 70 python3 -m benchmarks.moe --rows 1 2 4 16 --config-rows --out "$OUT/moe-layer" 2>&1 \
      | tee "$OUT/moe-layer.log" | tail -5
    timeout 110 $MOE --out "$OUT/moe-gemv" 2>&1 | tee "$OUT/moe-gemv.log" | tail -4
    timeout $((595 - SECONDS)) $MOE --no-expert-gemv --out "$OUT/moe-sorted" 2>&1 | tee "$OUT/moe-sorted.log" | tail -4
    tar czf /tmp/moe.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/moe.tgz "$OUT/" ;;
  tiles)  # the cuda suite and the studio's CUDA tests, the gemv tiles searched on one layer, the 30B-A3B forward
          # with the tiles found, the dense forward's profile
    gpu_tests 250
    timeout 140 python3 -m benchmarks.moe --rows 1 2 4 16 --config-rows --gemv-tiles --out "$OUT/moe-layer" 2>&1 \
      | tee "$OUT/moe-layer.log" | grep -v "^  gemv {" | tail -8
    TILES=$(python3 -c "import json, sys; from benchmarks.moe import GEMV_TILES
b = json.load(open(sys.argv[1]))['best_gemv']; print(*(b[k] for k in GEMV_TILES))" "$OUT/moe-layer/layer.json")
    echo "best gemv tiles: ${TILES:-none found}"
    timeout 120 $MOE ${TILES:+--gemv-tiles $TILES} --out "$OUT/moe-gemv-best" 2>&1 | tee "$OUT/moe-gemv-best.log" \
      | tail -4
    timeout $((590 - SECONDS)) python3 -m benchmarks.profile_forward --split-k on --contexts 64 --gemm skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -6
    tar czf /tmp/tiles.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/tiles.tgz "$OUT/" ;;
  step)  # the cuda suite and the studio's CUDA tests, then the decodes beside busy threads
    gpu_tests 250
    timeout $((590 - SECONDS)) python3 -m benchmarks.crowded_decode --arch sdar-1.7b --out "$OUT/crowded" 2>&1 \
      | tee "$OUT/crowded.log" | tail -11
    tar czf /tmp/step.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/step.tgz "$OUT/" ;;
  goals)  # the performance rows on the current kernels, then the 30B-A3B forward's profile; $2: the
          # seconds this call may run (default 370: what a session has left after one full call)
    goals_rows "${2:-370}"
    tar czf /tmp/goals.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/goals.tgz "$OUT/" ;;
  added|claims)
    if [ "$1" = claims ]; then
      timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_precompile.py 2>&1 \
        | tee "$OUT/precompile-tests.log" | tail -3
      timeout 150 python3 -m benchmarks.startup --precompile 4 --out "$OUT/startup" 2>&1 | grep -v "warm-up [0-9]" \
        | tail -4
    fi
    timeout 75 python3 -m benchmarks.profile_forward --split-k on --contexts 64 8k --gemm skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -10
    timeout 90 $BENCH --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -6 ;;
  ops)  # the GEMM and float8 modules' `cuda` tests (their launchers called directly), then the goals' bench rows
    timeout 220 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_gemm.py tests/test_fp8.py 2>&1 \
      | tee "$OUT/cuda-tests.log" | tail -3
    timeout $((380 - SECONDS)) $BENCH --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -6
    tar czf /tmp/ops.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/ops.tgz "$OUT/" ;;
  rest)
    timeout 150 $MOE --out "$OUT/moe" 2>&1 | tee "$OUT/moe.log" | tail -4
    timeout 90 python3 -m benchmarks.profile_forward --split-k on --contexts 64 8k --gemm skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -10
    timeout $((590 - SECONDS)) python3 -m benchmarks.profile_forward --arch sdar-30b-a3b --split-k on \
      --contexts 64 --gemm skinny+pdl --out "$OUT/profile-moe" 2>&1 | tee "$OUT/profile-moe.log" | tail -5
    tar czf /tmp/rest.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/rest.tgz "$OUT/" ;;
  folds)  # $2 seconds (default 560): the dense folds' `cuda` tests, then their measurements, the most telling first
    LIMIT=${2:-560}
    within 170 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_decode_attention.py tests/test_gemm.py \
      > "$OUT/cuda-tests.log" 2>&1; tail -n 4 "$OUT/cuda-tests.log"
    within 120 python3 -m benchmarks.profile_forward --split-k on --merge-fold both --contexts 64 8k \
      --gemm skinny+pdl --out "$OUT/profile-merge" 2>&1 | tee "$OUT/profile-merge.log" | tail -12
    within 70 python3 -m benchmarks.profile_forward --split-k on --merge-fold on --rope-in-attention \
      --contexts 64 8k --gemm skinny+pdl --out "$OUT/profile-rope" 2>&1 | tee "$OUT/profile-rope.log" | tail -8
    for splits in 1 2; do
      SDAR_ADD_SPLITS=$splits within 50 python3 -m benchmarks.profile_forward --split-k on --contexts 64 \
        --gemm skinny+pdl --out "$OUT/profile-add-splits$splits" 2>&1 | tee "$OUT/profile-add-splits$splits.log" \
        | tail -6
    done
    within $((LIMIT - SECONDS)) $BENCH --merge-fold --rope-in-attention --out "$OUT/bench-attention-folds" 2>&1 \
      | tee "$OUT/bench-attention-folds.log" | tail -5
    tar czf /tmp/folds.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/folds.tgz "$OUT/" ;;
  moe-folds)  # $2 seconds (default 560): the MoE folds' `cuda` tests, then the 30B-A3B rows with each
    LIMIT=${2:-560}
    within 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_moe.py > "$OUT/cuda-tests.log" 2>&1
    tail -n 4 "$OUT/cuda-tests.log"
    within 100 $MOE --out "$OUT/moe" 2>&1 | tee "$OUT/moe.log" | tail -3
    within 100 $MOE --merge-fold --rope-in-attention --expert-fold --gate-route --out "$OUT/moe-all" 2>&1 \
      | tee "$OUT/moe-all.log" | tail -3
    within 100 $MOE --merge-fold --expert-fold --out "$OUT/moe-no-gate-route" 2>&1 \
      | tee "$OUT/moe-no-gate-route.log" | tail -3
    within $((LIMIT - SECONDS)) python3 -m benchmarks.profile_forward --arch sdar-30b-a3b --split-k on \
      --merge-fold on --expert-fold --gate-route --contexts 64 --gemm skinny+pdl --out "$OUT/profile-moe-folds" 2>&1 \
      | tee "$OUT/profile-moe-folds.log" | tail -5
    tar czf /tmp/moe-folds.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/moe-folds.tgz "$OUT/" ;;
  all-folds)  # $2 seconds (default 590): `folds` and `moe-folds`, each cut to its most telling rows
    LIMIT=${2:-590}
    within 150 python3 -m pytest -q -p no:cacheprovider -n 6 -m cuda tests/test_decode_attention.py \
      tests/test_gemm.py tests/test_moe.py > "$OUT/cuda-tests.log" 2>&1; tail -n 4 "$OUT/cuda-tests.log"
    within 50 python3 -m benchmarks.profile_forward --split-k on --merge-fold both --contexts 64 --gemm skinny+pdl \
      --out "$OUT/profile-merge" 2>&1 | tee "$OUT/profile-merge.log" | tail -8
    within 35 python3 -m benchmarks.profile_forward --split-k on --merge-fold on --rope-in-attention --contexts 64 \
      --gemm skinny+pdl --out "$OUT/profile-rope" 2>&1 | tee "$OUT/profile-rope.log" | tail -6
    within 100 $MOE --out "$OUT/moe" 2>&1 | tee "$OUT/moe.log" | tail -3
    within 100 $MOE --merge-fold --rope-in-attention --expert-fold --gate-route --out "$OUT/moe-all" 2>&1 \
      | tee "$OUT/moe-all.log" | tail -3
    within $((LIMIT - SECONDS)) $BENCH --merge-fold --rope-in-attention --out "$OUT/bench-attention-folds" 2>&1 \
      | tee "$OUT/bench-attention-folds.log" | tail -5
    tar czf /tmp/all-folds.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/all-folds.tgz "$OUT/" ;;
  switched)  # the paths switched on after the H200 run of 2026-12-07, and what that run left unmeasured
    LIMIT=${2:-450}
    within 130 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda -rf --tb=short tests/test_warmup.py \
      tests/test_decoding.py tests/test_attention.py tests/test_moe.py tests/test_decode_attention.py \
      tests/test_read_ahead.py tests/test_model_parity.py > "$OUT/cuda-tests.log" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests.log" | tail -12
    # the merge fold's graph test's prompts (3 splits, float32) through the merge kernel's form against the plain path
    within 40 python3 -c "
import torch; from sdar_core.decoding import generate; from tests.helpers import random_model, tiny_config
model = random_model(tiny_config('sdar', block_size=4)).cuda(); g = torch.Generator().manual_seed(5)
prompts = [torch.randint(2, 90, (n,), generator=g).tolist() for n in (150, 157)]
kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy='static')
a, b = (generate(model, prompts, runner_mode=m, **kw).tokens.tolist() for m in ('graph', 'plain'))
print('merge kernel graph == plain at 3 splits:', a == b, sum(x != y for r, s in zip(a, b) for x, y in zip(r, s)))
" > "$OUT/split-tokens.txt" 2>&1; cat "$OUT/split-tokens.txt"
    within 75 $MOE --out "$OUT/moe" 2>&1 | tee "$OUT/moe.log" | tail -3
    within 75 $MOE --expert-fold --out "$OUT/moe-expert-fold" 2>&1 | tee "$OUT/moe-expert-fold.log" | tail -3
    within 75 $MOE --expert-fold --gate-route --out "$OUT/moe-gate-route" 2>&1 | tee "$OUT/moe-gate-route.log" \
      | tail -3
    within 60 python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 --new-tokens 256 \
      --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 --transformers none --merge-fold \
      --out "$OUT/bench-merge-fold" 2>&1 | tee "$OUT/bench-merge-fold.log" | tail -4
    tar czf /tmp/switched.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/switched.tgz "$OUT/" ;;
  validate)  # within $2 s (default 580): every `cuda` test on the defaults as they stand (the MoE folds on), a cold start
    # with 4 precompile workers (the warm-up now captures each runner's prefill graph), the dense forward's profile at
    # 64 without and with merge_fold, then with o_proj's and down's splits capped at 2 (SDAR_ADD_SPLITS)
    LIMIT=${2:-580}
    within 250 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda -rf --tb=short tests/ \
      --continue-on-collection-errors > "$OUT/cuda-tests.log" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests.log" | tail -12
    within 150 python3 -m benchmarks.startup --precompile 4 --stand-ins 4 --out "$OUT/startup-w4" 2>&1 \
      | grep -v "warm-up [0-9]" | grep -v "^RESULT" | grep . | tail -6
    within 70 python3 -m benchmarks.profile_forward --split-k on --merge-fold both --contexts 64 --gemm skinny+pdl \
      --out "$OUT/profile-merge" 2>&1 | tee "$OUT/profile-merge.log" | tail -8
    SDAR_ADD_SPLITS=2 within $((LIMIT - SECONDS)) python3 -m benchmarks.profile_forward --split-k on --contexts 64 \
      --gemm skinny+pdl --out "$OUT/profile-add-splits2" 2>&1 | tee "$OUT/profile-add-splits2.log" | tail -6
    tar czf /tmp/validate.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/validate.tgz "$OUT/" ;;
  persistent)  # within $2 s (default 580): what the eighteenth session left unmeasured, the most telling first: the
    # `cuda` tests of the persistent MLP (Kernels.persistent_mlp), of the paths switched on since the last GPU run and
    # of the GEMM with two weight tiles in flight (SDAR_GEMM_AHEAD=1); the dense profile at 64 without and with the
    # persistent MLP (4 programs an SM), then with SDAR_GEMM_AHEAD=1; the goals' 64-token bench rows by default, with
    # the persistent MLP, with SDAR_GEMM_AHEAD=1; the persistent MLP's profile at 2 and 6 programs an SM; the 1.7B's
    # projections one by one at 1 and 16 rows with one and two tiles in flight; the 30B-A3B rows (the MoE folds on)
    # without and with the expert down gemv's first 4 slots loaded before its wait (SDAR_MOE_EARLY=4)
    LIMIT=${2:-580}
    # the persistent kernel's own tests first and alone: a kernel whose programs wait on each other could hang, and
    # then none of its measurements below runs (MLP=off)
    within 60 python3 -m pytest -q -p no:cacheprovider -m cuda -rf --tb=short tests/test_persistent.py \
      > "$OUT/cuda-tests-persistent.log" 2>&1 && MLP=both || MLP=off
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests-persistent.log" | tail -6; echo "persistent MLP: $MLP"
    within 90 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda -rf --tb=short \
      tests/test_decoding.py tests/test_warmup.py tests/test_moe.py tests/test_attention.py \
      > "$OUT/cuda-tests.log" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests.log" | tail -12
    SDAR_GEMM_AHEAD=1 within 50 python3 -m pytest -q -p no:cacheprovider -n 4 -m cuda -rf --tb=short \
      tests/test_gemm.py > "$OUT/cuda-tests-ahead.log" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests-ahead.log" | tail -6
    within 50 python3 -m benchmarks.profile_forward --split-k on --persistent-mlp $MLP --contexts 64 \
      --gemm skinny+pdl --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -8
    SDAR_GEMM_AHEAD=1 within 40 python3 -m benchmarks.profile_forward --split-k on --persistent-mlp $MLP \
      --contexts 64 --gemm skinny+pdl --out "$OUT/profile-ahead" 2>&1 | tee "$OUT/profile-ahead.log" | tail -6
    for v in default $([ $MLP = off ] || echo persistent) ahead; do
      SDAR_GEMM_AHEAD=$([ $v = ahead ] && echo 1 || echo 0) within 55 python3 -m benchmarks.bench --arch sdar-1.7b \
        --fuse --prompt-lengths 64 --new-tokens 256 --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 \
        --transformers none $([ $v = persistent ] && echo --persistent-mlp) --out "$OUT/bench-$v" 2>&1 \
        | tee "$OUT/bench-$v.log" | tail -3
    done
    [ $MLP = off ] || for per_sm in 2 6; do
      SDAR_MLP_PER_SM=$per_sm within 30 python3 -m benchmarks.profile_forward --split-k on --persistent-mlp on \
        --contexts 64 --gemm skinny+pdl --out "$OUT/profile-$per_sm-per-sm" 2>&1 \
        | tee "$OUT/profile-$per_sm-per-sm.log" | tail -4
    done
    for ahead in 0 1; do
      SDAR_GEMM_AHEAD=$ahead within 50 python3 -m benchmarks.gemm --archs sdar-1.7b --out "$OUT/gemm-ahead$ahead" \
        --rows 1 16 --sweep-rows 0 2>&1 | tee "$OUT/gemm-ahead$ahead.log" | grep -v "^  " | tail -4
    done
    for early in 0 4; do  # the down gemv's first 4 slots' tiles before its wait (SDAR_MOE_EARLY), against none
      SDAR_MOE_EARLY=$early within $(((LIMIT - SECONDS) / 2)) $MOE --out "$OUT/moe-early$early" 2>&1 \
        | tee "$OUT/moe-early$early.log" | tail -3
    done
    tar czf /tmp/persistent.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/persistent.tgz "$OUT/" ;;
  switched-short)  # each result a flat file of $OUT, so that a call cut short still brings back what it finished
    LIMIT=${2:-200}
    within 60 python3 -m pytest -q -p no:cacheprovider -n 5 -m cuda -rf --tb=short \
      tests/test_warmup.py::test_cuda_warm_up_captures_every_warmed_runners_prefill_graph \
      tests/test_decoding.py::test_cuda_short_prefills_replay_one_graph_per_runner_and_equal_the_plain_path \
      tests/test_attention.py::test_cuda_sdar_forward_of_several_blocks_takes_the_mask_free_form_and_equals_the_eager_backend \
      tests/test_moe.py::test_cuda_the_router_and_the_routing_in_one_kernel_choose_as_the_two_kernels_in_a_graph \
      tests/test_decode_attention.py::test_cuda_graph_runner_with_the_merge_fold_equals_plain > "$OUT/cuda-tests.log" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests.log" | tail -8
    for v in default expert-fold; do
      flags=$([ $v = default ] || echo --expert-fold --gate-route)
      within 70 $MOE $flags --out /tmp/moe-$v 2>&1 | tail -3 && cp /tmp/moe-$v/results.json "$OUT/moe-$v.json"
    done ;;
  h200)  # on an H200, within one call: the README's sweep, the 30B-A3B rows, the dense forward's profile, the
    # 30B-A3B's if time is left (the cold start is measured on an H100 by `coldstart`); on any other card, `prefill`
    grep -q H200 "$OUT/gpu.txt" || exec bash "$0" prefill
    LIMIT=590
    # first, in eight processes, the `cuda` tests of the default paths changed since the last GPU run (the graphed
    # prefill and its warm-up, the in-block kernel, the MoE folds): a sweep of broken kernels measures nothing
    within 110 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda -rf --tb=short tests/test_decoding.py \
      tests/test_warmup.py tests/test_moe.py tests/test_attention.py tests/test_decode_attention.py \
      > "$OUT/cuda-tests.log" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed" "$OUT/cuda-tests.log" | tail -8
    within 400 python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 2048 8192 \
      --new-tokens 256 512 512 --batch-sizes 1 4 16 32 64 --block-lengths 4 16 --repeats 2 --transformers compiled \
      --out "$OUT/readme" 2>&1 | tee "$OUT/readme.log" | tail -4
    within 100 $MOE --out "$OUT/moe" 2>&1 | tee "$OUT/moe.log" | tail -3
    within 80 python3 -m benchmarks.profile_forward --split-k on --contexts 64 8k --gemm skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -6
    within 60 python3 -m benchmarks.profile_forward --arch sdar-30b-a3b --split-k on --contexts 64 \
      --gemm skinny+pdl --out "$OUT/profile-moe" 2>&1 | tee "$OUT/profile-moe.log" | tail -5
    python3 -m benchmarks.goals --bench "$OUT/readme" --moe "$OUT/moe" --baseline benchmarks/results/h200-sdar-1.7b-fused \
      benchmarks/results/h200-gemv-tiles/goals --startup benchmarks/results/h100-stand-ins/startup-w4/startup.json \
      --profile "$OUT/profile/profile.json" --moe-profile "$OUT/profile-moe/profile.json" --out "$OUT/goals.md" 2>&1 \
      | tail -20
    tar czf /tmp/h200.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/h200.tgz "$OUT/" ;;
  prefill)  # the `cuda` tests of the modules a prefill runs through (no studio: the device has no Gradio), then
    # benchmarks.prefill (AR, SDAR under the mask, SDAR mask-free with the torch ops and with in_block.py's kernel, op
    # by op and padded as a graph, 64-8k), the goals' bench rows (each with its prefill_ms) without
    # (--no-graphed-prefill --no-in-block-kernel) and with the two, then benchmarks.first_request with the graphed
    # prefill, within $2 s
    # (default 560); the most telling first, should the time run out
    LIMIT=${2:-560}
    # (six test processes on the one GPU: the default paths the kernels' refactors touched, the split-K attention,
    # the GEMM and the MoE kernels, are checked here too)
    within $((LIMIT * 3 / 10)) python3 -m pytest -q -p no:cacheprovider -n 6 -m cuda tests/test_attention.py \
      tests/test_decoding.py tests/test_model_parity.py tests/test_norm_rope.py tests/test_fused.py \
      tests/test_read_ahead.py tests/test_benchmarks_prefill.py tests/test_warmup.py tests/test_decode_attention.py \
      tests/test_gemm.py tests/test_moe.py > "$OUT/cuda-tests.log" 2>&1
    tail -n 4 "$OUT/cuda-tests.log"
    within 150 python3 -m benchmarks.prefill --out "$OUT/prefill" 2>&1 | tee "$OUT/prefill.log" | tail -18
    within $((LIMIT * 15 / 100)) $BENCH --no-graphed-prefill --no-in-block-kernel --out "$OUT/bench-op-by-op" \
      2>&1 | tee "$OUT/bench-op-by-op.log" | tail -5
    within $((LIMIT * 15 / 100)) $BENCH --out "$OUT/bench-prefill-switches" \
      2>&1 | tee "$OUT/bench-prefill-switches.log" | tail -5
    within $((LIMIT * 3 / 10)) python3 -m benchmarks.first_request --graphed-prefill \
      --out "$OUT/first-request-graphed-prefill" 2>&1 | tail -12
    tar czf /tmp/prefill.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/prefill.tgz "$OUT/" ;;
  prefill-short)  # what a nearly spent session can afford: the prefill's `cuda` tests, then bench's 64-token rows
    timeout 80 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_attention.py tests/test_decoding.py \
      tests/test_warmup.py tests/test_benchmarks_prefill.py > "$OUT/cuda-tests.log" 2>&1; tail -n 4 "$OUT/cuda-tests.log"
    timeout 55 python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 --new-tokens 256 \
      --batch-sizes 1 --block-lengths 16 --no-dynamic --repeats 2 --transformers none --graphed-prefill \
      --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -4
    tar czf /tmp/prefill-short.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/prefill-short.tgz "$OUT/" ;;
  coldstart)
    [ "${CUDA_TESTS-}" = none ] || timeout 170 python3 -m pytest -q -p no:cacheprovider -m cuda \
      tests/test_precompile.py ${CUDA_TESTS-tests/test_fused.py tests/test_norm_rope.py tests/test_decode_attention.py} \
      2>&1 | tee "$OUT/cuda-tests.log" | tail -3
    for workers in ${WORKERS:-4 8}; do
      timeout 150 python3 -m benchmarks.startup --precompile $workers --stand-ins $workers \
        --out "$OUT/startup-w$workers" 2>&1 \
        | grep -v "warm-up [0-9]" | grep -v "^RESULT" | grep . | tail -8
    done
    tar czf /tmp/coldstart.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/coldstart.tgz "$OUT/" ;;
  defaults|defaults-studio)  # every `cuda` test (defaults-studio: none, for a second GPU after the suite passed
    # on one) and the studio's tests on CUDA, the goals' rows, the dense forward's profile at 64 and 8k, then the
    # 1.7B, 4B and 8B projections one by one at 1 and 16 rows, all on the defaults as they stand (SDAR_SKINNY_ROWS in
    # the environment overrides the rows), within $2 seconds (default 590)
    LIMIT=${2:-590}
    if [ "${1}" = defaults ]; then gpu_tests $((LIMIT * 4 / 10 > 200 ? LIMIT * 4 / 10 : 200))
    else studio_tests 120; tail -n 2 "$OUT/app-tests-gpu.log"; fi
    goals_rows $((LIMIT - 60 > SECONDS + 170 ? LIMIT - 60 : SECONDS + 170))
    within 50 python3 -m benchmarks.profile_forward --split-k on --contexts 64 8k --gemm skinny+pdl \
      --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" | tail -3
    within 200 python3 -m benchmarks.gemm --out "$OUT/gemm" --rows 1 16 --sweep-rows 0 --fp8 \
      2>&1 | tee "$OUT/gemm.log" | grep -v "^  " | tail -4
    tar czf /tmp/defaults.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/defaults.tgz "$OUT/" ;;
  fold)  # the residual add and the norm in the GEMMs (Kernels.norm_fold): tests, bench rows and profile, each
    # with the fold and without
    LIMIT=590
    within 170 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_gemm.py tests/test_fused.py \
      tests/test_model_parity.py ${FOLD_TESTS-tests/test_fp8.py} 2>&1 | tee "$OUT/cuda-tests.log" | tail -3
    UNFOLDED="norm_rope cache_write qk_rope add_norm silu_mul silu_down routing"
    within 110 $BENCH --out "$OUT/bench-fold" 2>&1 | tee "$OUT/bench-fold.log" | tail -4
    within 110 $BENCH --fusions $UNFOLDED --out "$OUT/bench-unfolded" 2>&1 | tee "$OUT/bench-unfolded.log" | tail -4
    within 60 python3 -m benchmarks.profile_forward --split-k on --contexts 64 --gemm skinny+pdl \
      --out "$OUT/profile-fold" 2>&1 | tee "$OUT/profile-fold.log" | tail -4
    within 60 python3 -m benchmarks.profile_forward --split-k on --contexts 64 --gemm skinny+pdl \
      --fusions $UNFOLDED --out "$OUT/profile-unfolded" 2>&1 | tee "$OUT/profile-unfolded.log" | tail -4
    tar czf /tmp/fold.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/fold.tgz "$OUT/" ;;
  readme)
    timeout 480 python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 2048 8192 \
      --new-tokens 256 512 512 --batch-sizes 1 4 16 32 64 --block-lengths 4 16 --repeats 2 --transformers compiled \
      --out "$OUT/readme" 2>&1 | tee "$OUT/readme.log" | tail -8
    timeout $((590 - SECONDS)) python3 -m benchmarks.startup --precompile 4 --out "$OUT/startup" 2>&1 \
      | grep -v "warm-up [0-9]" | tail -6
    tar czf "$OUT/readme-startup.tgz" -C "$OUT" readme startup && rm -r "$OUT/readme" "$OUT/startup" ;;
esac
