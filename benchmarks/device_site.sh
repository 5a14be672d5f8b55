# Sourced by device_studio.sh and device_kernels.sh on the GPU machine, with OUT set: Gradio's wheels from .whl/
# (device_studio.sh says how they are fetched) installed into /tmp/site and checked to import; studio_tests and
# gpu_tests.
if ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
  python3 -c "import gradio, gradio_client, plotly" 2>&1 | tail -n 1 | sed 's/^/the carried wheels do not import: /' \
    | grep . && echo "(fetch what is missing into .whl/ as device_studio.sh says)"
fi
studio_tests() {  # the studio's tests on CUDA, at most $1 seconds, into $OUT/app-tests-gpu.log
  GRADIO_ANALYTICS_ENABLED=False timeout "$1" python3 -m pytest -q -p no:cacheprovider tests/test_app_gpu.py \
    tests/test_app_ui.py tests/test_app_recording.py tests/test_warmup.py tests/test_grad_modes.py \
    tests/test_app_scheduler.py tests/test_joining.py > "$OUT/app-tests-gpu.log" 2>&1
}
gpu_tests() {  # every `cuda` test and the studio's tests on CUDA side by side, at most $1 seconds
  # (a studio module that cannot import Gradio there fails alone: the kernels' tests still run)
  GRADIO_ANALYTICS_ENABLED=False timeout "$1" python3 -m pytest -q -p no:cacheprovider -m cuda tests/ \
    --continue-on-collection-errors > "$OUT/cuda-tests.log" 2>&1 &
  studio_tests "$1"
  wait
  tail -n 4 "$OUT/cuda-tests.log" "$OUT/app-tests-gpu.log"
}
