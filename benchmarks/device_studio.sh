#!/usr/bin/env bash
# The studio's GPU checks and measurements on a GPU machine (the device tool runs this in the repository root):
#   bash benchmarks/device_studio.sh tests   # the `cuda` tests, and the studio's tests with CUDA as their device
#   bash benchmarks/device_studio.sh bench   # python -m benchmarks.studio on the SDAR-1.7B shape, crowd sweep included
#   bash benchmarks/device_studio.sh crowd   # the crowd sweep alone (1, 8, 16 visitors), with the server's account
#   bash benchmarks/device_studio.sh all     # the tests, then the bench (crowds 1, 8, 16) in one ten-minute call
#   bash benchmarks/device_studio.sh bench-apptests   # the bench (crowds 1, 8, 16), then the studio's GPU tests
#   bash benchmarks/device_studio.sh first      # the first request after the warm-up (before/after), then the cuda tests
#   bash benchmarks/device_studio.sh crowd-readme  # the crowd sweep alone, then the README's engine sweep
#   bash benchmarks/device_studio.sh crowd-http    # the crowd sweep alone, plain-HTTP visitors only
#   bash benchmarks/device_studio.sh crowd-5ms [SECONDS]   # the crowd with CPython's 5 ms switch interval
#   bash benchmarks/device_studio.sh final      # the bench with plain-HTTP visitors only (crowds 1, 8, 16), then the
#                                               # studio's GPU tests, time allowing; all packed in one .tgz
#   bash benchmarks/device_studio.sh pages [S]  # the bench with plain-HTTP visitors only (crowds 1, 8, 16), then every
#                                               # `cuda` test and the studio's tests on CUDA side by side, all done
#                                               # within S seconds (default 590); one .tgz
#   bash benchmarks/device_studio.sh join       # joining a running batch against the next batch, a cold start with
#                                               # precompile workers, then every GPU test
# Gradio is not installed there: its wheels travel in .whl/ (git-ignored; the device call carries it), fetched here
# with `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl`
# for gradio, gradio_client, plotly and every dependency the GPU image lacks (fastapi, starlette, uvicorn,
# pydantic(-core), python-multipart, orjson, safehttpx, groovy, hf-gradio, brotli, ..., opentelemetry-api, which
# fastapi 0.165 imports, and pytz with tzdata, which Gradio's DateTime imports). Each call first checks that they
# import and says what is missing.
# Results go to $OUT (the device tool's folder), else out/device.
set -u
OUT=${OUT:-out/device}
mkdir -p "$OUT"
source benchmarks/device_site.sh  # the wheels above, installed and checked; gpu_tests
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
case "${1:-tests}" in
  tests)
    timeout 330 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/cuda-tests.log" | tail -15
    timeout 230 python3 -m pytest -q -p no:cacheprovider tests/test_app_gpu.py tests/test_app_ui.py \
      tests/test_app_recording.py tests/test_warmup.py tests/test_grad_modes.py tests/test_benchmarks_studio.py \
      2>&1 | tee "$OUT/app-tests-gpu.log" | tail -15 ;;
  bench)
    timeout 570 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/h200-studio" --crowd 1 8 16 --repeats 2 \
      2>&1 | tee "$OUT/studio-bench.log" | tail -40 ;;
  crowd)
    timeout 570 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/h200-studio-crowd-only" --crowd 1 8 16 \
      --crowd-only 2>&1 | tee "$OUT/studio-crowd.log" | tail -40 ;;
  all)  # one call of at most ~10 minutes: the GPU tests, then the bench (crowds 1, 8, 16) with the time left
    timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/cuda-tests.log" | tail -5
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_app_gpu.py tests/test_app_ui.py \
      tests/test_app_recording.py tests/test_warmup.py tests/test_grad_modes.py 2>&1 | tee "$OUT/app-tests-gpu.log" | tail -5
    timeout $((585 - SECONDS)) python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/h200-studio" --crowd 1 8 16 \
      --repeats 2 2>&1 | tee "$OUT/studio-bench.log" | tail -40 ;;
  bench-apptests)  # one call: the bench first (its results written), then the studio's tests on CUDA, time allowing
    timeout 430 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/h200-studio" --crowd 1 8 16 --repeats 2 \
      2>&1 | tee "$OUT/studio-bench.log" | tail -60
    timeout $((590 - SECONDS)) python3 -m pytest -q -p no:cacheprovider tests/test_app_gpu.py tests/test_app_ui.py \
      tests/test_app_recording.py tests/test_warmup.py tests/test_grad_modes.py tests/test_app_scheduler.py \
      2>&1 | tee "$OUT/app-tests-gpu.log" | tail -8 ;;
  final)  # the bench as a page reads the studio (plain HTTP), then the studio's tests on CUDA with the time left
    timeout 430 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/studio" --crowd 1 8 16 --repeats 3 \
      --clients http 2>&1 | tee "$OUT/studio-bench.log" | tail -45
    timeout $((585 - SECONDS)) python3 -m pytest -q -p no:cacheprovider tests/test_app_gpu.py tests/test_warmup.py \
      tests/test_grad_modes.py tests/test_app_scheduler.py tests/test_joining.py 2>&1 \
      | tee "$OUT/app-tests-gpu.log" | tail -6
    tar czf /tmp/final.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/final.tgz "$OUT/" ;;
  first)  # the first request of each prompt length after the warm-up (and with the old prefill path); the cuda tests
    timeout 150 python3 -m benchmarks.first_request --out "$OUT/first-request" 2>&1 | tail -24
    timeout 150 python3 -m benchmarks.first_request --static-prefill --out "$OUT/first-request-static-prefill" \
      2>&1 | tail -24
    timeout $((580 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/cuda-tests.log" \
      | tail -5 ;;
  crowd-readme)  # one call: the crowd sweep alone (1, 8, 16 visitors), then the README's engine sweep in the time left
    timeout 270 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/studio-crowd" --crowd 1 8 16 \
      --crowd-only 2>&1 | tee "$OUT/studio-crowd.log" | tail -30
    timeout $((590 - SECONDS)) python3 -m benchmarks.bench --arch sdar-1.7b --fuse --prompt-lengths 64 2048 8192 \
      --new-tokens 256 512 512 --batch-sizes 1 4 16 64 --block-lengths 4 16 --repeats 2 --transformers compiled \
      --out "$OUT/readme" 2>&1 | tee "$OUT/readme.log" | tail -12
    tar czf /tmp/crowd-readme.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/crowd-readme.tgz "$OUT/" ;;
  crowd-http)  # the crowd sweep alone (1, 8, 16 visitors) read over plain HTTP, the page's way: a short call
    timeout 330 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/studio-crowd-http" --crowd 1 8 16 \
      --crowd-only --clients http 2>&1 | tee "$OUT/studio-crowd-http.log" | tail -40 ;;
  crowd-5ms)  # the crowd with CPython's own switch interval, to compare with a run of `bench` on the same machine
    SDAR_SWITCH_INTERVAL=0.005 timeout "${2:-290}" python3 -m benchmarks.studio --arch sdar-1.7b \
      --out "$OUT/h200-studio-crowd-switch-5ms" --crowd 1 8 16 --crowd-only --repeats 1 \
      2>&1 | tee "$OUT/studio-crowd-5ms.log" | tail -25 ;;
  join)  # benchmarks.joining on the SDAR-1.7B shape, then the cuda tests and the studio's tests on CUDA side by side
    timeout 200 python3 -m benchmarks.joining --arch sdar-1.7b --out "$OUT/joining" 2>&1 | tee "$OUT/joining.log" | tail -30
    timeout 200 python3 -m benchmarks.startup --arch sdar-1.7b --precompile 4 --out "$OUT/startup" 2>&1 \
      | tee "$OUT/startup.log" | grep -E "^(cold|restart)"
    gpu_tests $((590 - SECONDS))
    tar czf /tmp/join-all.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/join-all.tgz "$OUT/" ;;
  pages)  # the bench as a page reads the studio (plain HTTP), then every `cuda` test beside the studio's tests on CUDA
    timeout 330 python3 -m benchmarks.studio --arch sdar-1.7b --out "$OUT/studio" --crowd 1 8 16 --repeats 3 \
      --clients http > "$OUT/studio-bench.log" 2>&1
    tail -n 45 "$OUT/studio-bench.log"
    gpu_tests $((${2:-590} - SECONDS))
    tar czf /tmp/pages.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/pages.tgz "$OUT/" ;;
esac
