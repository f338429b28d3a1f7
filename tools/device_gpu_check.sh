#!/usr/bin/env bash
# The checks of `make gpu-check` on a GPU machine, run from the repository root:
# tools/gpu_check.py (the inference backends: throughput against their reference, LoRA attach and
# detach, a checkpoint swap under load) and arena_training.gpu_check (SFT and DPO steps).
#
# Made for a lent machine with no network: its own python3 with a CUDA build of torch, and the
# Python packages it lacks carried as wheels in .whl/ (installed into $SITE, /tmp/site). Each check
# is bounded by `timeout`, writes its JSON report after every step and its log into $OUT (default
# ./gpu-check-out), so a check cut short still leaves its figures. Both checks always run; the
# exit status is the first failure's. Limits and arguments can be changed from the environment:
# INFERENCE_TIMEOUT, TRAINING_TIMEOUT (seconds), INFERENCE_ARGS, TRAINING_ARGS (set but empty:
# the checks' own defaults, as `make gpu-check` runs them), GPU_PYTHON, SITE.
set -uo pipefail

OUT=${OUT:-gpu-check-out}
PYTHON=${GPU_PYTHON:-python3}
INFERENCE_TIMEOUT=${INFERENCE_TIMEOUT:-210}
TRAINING_TIMEOUT=${TRAINING_TIMEOUT:-150}
SITE=${SITE:-/tmp/site}
INFERENCE_ARGS=${INFERENCE_ARGS---prompts 256 --max-tokens 128 --batch 64}
TRAINING_ARGS=${TRAINING_ARGS---steps 5}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Progress bars fill the logs with carriage returns; the reports carry the figures.
export HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1

if compgen -G ".whl/*.whl" >/dev/null; then
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl >"$OUT/pip.log" 2>&1; then
    echo "installing the carried wheels failed:"
    cat "$OUT/pip.log"
    exit 1
  fi
  export PYTHONPATH=$SITE:services${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=services${PYTHONPATH:+:$PYTHONPATH}
fi

{
  nvidia-smi
  "$PYTHON" -c 'import sys, torch, transformers
print(sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("transformers", transformers.__version__)'
  "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|safetensors|trl|peft|accelerate|datasets|pyarrow|fsspec|pydantic|pydantic.core|typing.extensions|protobuf|grpcio|orjson|vllm|deepspeed|numpy) '
} >"$OUT/environment.txt" 2>&1

status=0
run_check() {  # name, seconds, command...
  local name=$1 seconds=$2 code=0
  shift 2
  local started=$SECONDS
  timeout -k 10 "$seconds" "$@" >"$OUT/$name.log" 2>&1 || code=$?
  echo "== $name: exit $code after $((SECONDS - started)) s (limit $seconds s; 124 = cut off)"
  tail -n 15 "$OUT/$name.log"
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=$code; fi
}

# shellcheck disable=SC2086  # the argument strings are meant to split
run_check gpu-check "$INFERENCE_TIMEOUT" \
  "$PYTHON" tools/gpu_check.py $INFERENCE_ARGS --record "$OUT/gpu-check.json"
# shellcheck disable=SC2086
run_check training-check "$TRAINING_TIMEOUT" \
  "$PYTHON" -m arena_training.gpu_check $TRAINING_ARGS --record "$OUT/training-check.json"

for report in "$OUT/gpu-check.json" "$OUT/training-check.json"; do
  echo "== $report"
  cat "$report" 2>/dev/null || echo "(not written)"
done
exit "$status"
