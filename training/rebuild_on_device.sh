#!/bin/bash
# The whole rebuild of the embedded pair in one device session (assets/models/README.md, "Second generation"):
# the four training stages (python -m training.build_embedded), then the evaluation, in the background from a private
# copy of the code, so that a sequence of device calls of at most 10 minutes can watch it. This is the script the
# shipped pair was built with (three calls on one H100: 545 s, 390 s after a first call that only started it).
#
#   bash training/rebuild_on_device.sh [seconds]   # from a folder holding the code and embedded.tar.xz
#                                                  # (tar cJf embedded.tar.xz -C data embedded); each call watches
#                                                  # the build for at most `seconds` (default 540), then prints its
#                                                  # progress; the call after the evaluation ends copies the results
#                                                  # to $OUT: both models' weight shards and one tar of the rest.
set -u
W=${W:-/tmp/rebuild}
if [ ! -d "$W" ]; then
  cp -r . "$W" && cd "$W" && mkdir -p data && tar xJf embedded.tar.xz -C data || exit 1
  nvidia-smi --query-gpu=name,memory.total --format=csv
  setsid nohup bash -c "cd $W; export PYTHONUNBUFFERED=1; date +%s > build.start;
    python -m training.build_embedded > build.log 2>&1; echo \"BUILD_EXIT \$?\" >> build.log; date +%s > build.end;
    python -m benchmarks.evaluate --data data/embedded --out eval-full.json --print-samples > eval.log 2>&1;
    echo \"EVAL_EXIT \$?\" >> eval.log; date +%s > eval.end" > /dev/null 2>&1 < /dev/null &
fi
cd "$W"
end=$((SECONDS + ${1:-540}))
while [ $SECONDS -lt $end ] && [ ! -f eval.end ]; do sleep 15; done
grep -a "== \|BUILD_EXIT\|Error\|error" build.log | tail -15
tail -c 600 build.log | tr '\r' '\n' | tail -3
[ -f eval.log ] && tail -25 eval.log
if [ -f eval.end ] && [ -n "${OUT:-}" ]; then
  for m in sdar-tiny ar-tiny; do mkdir -p "$OUT/$m"; cp assets/models/$m/*.safetensors "$OUT/$m/"; done
  tar czf "$OUT/rest.tgz" --exclude='*.safetensors' assets/models/sdar-tiny assets/models/ar-tiny \
      runs/embedded/*/metrics.csv build.log eval.log eval-full.json build.start build.end eval.end
  ls -la "$OUT" "$OUT"/*
fi
