#!/usr/bin/env bash
# The GPU benchmarks in one go, for a lent H100/H200, in under 8 minutes: side by side with MusicGen
# (benchmarks/peers.py: batch 1 and 8, 20 steps and a few-step setting), the paper preset at batch 64, the
# compiled patch step and the bf16 loop against eager fp32 (benchmarks/compiled.py, CUDA graphs per bucket), the paper VAE's
# decode in fp32 and bf16 (benchmarks/decode.py), the server's time to first audio (benchmarks/serve.py) and training throughput with MFU (benchmarks/train.py).
# Each stage has a timeout; every stage's last JSON line (or why it has none) goes into one JSON file with
# the device, and each stage's whole output into a log beside it.
#
#   bash benchmarks/gpu.sh --wheels                  # HERE, with PyPI: fetch what the GPU image lacks into .whl/
#   bash benchmarks/gpu.sh [--few-step midpoint:4] [--out FILE]   # THERE, from the repo root, with .whl carried
#
# The repo itself travels, so PYTHONPATH points at it instead of installing our wheel (which would carry
# the 44 MB default model a second time). The image has torch, transformers, numpy, safetensors, tokenizers,
# yaml, fsspec, tqdm, timm; the core's other imports travel as wheels (WHEELS). PyAV (36 MB) does not fit
# in what travels, and peers.py needs none: the engine imports PyAV only where it reads a video.
# Ray (79 MB) does not fit either: serve.py and train.py are skipped with the reason where their imports
# or fluidsynth are missing.
set -uo pipefail

WHEELS="open_clip_torch ftfy wcwidth soundfile cffi pycparser pydantic pydantic_core annotated-types typing-inspection"
FEW_STEP=midpoint:4  # SOLVER:STEPS, timed beside euler:20
REPEATS=2  # peers.py's timed runs per configuration: 3 would not fit in the 8 minutes with MusicGen-medium
DEADLINE=455  # seconds: stage timeouts are cut to what is left; with the kill grace and summary, < 8 min
OUT_FILE="${OUT:-/tmp}/gpu-results.json"

fetch_wheels() {
  # The versions this checkout's venv has, built for the GPU image (Python 3.12, x86-64 manylinux).
  local python=.venv/bin/python name version
  [ -x "$python" ] || python=python3
  mkdir -p .whl
  for name in $WHEELS; do
    version=$("$python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name") || exit 1
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$name==$version" || exit 1
  done
  du -sh .whl
}

while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) fetch_wheels; exit ;;
    --few-step) FEW_STEP="$2"; shift 2 ;;
    --out) OUT_FILE="$2"; shift 2 ;;
    *) echo "gpu.sh: unknown argument $1 (use --wheels, --few-step SOLVER:STEPS, --out FILE)" >&2; exit 2 ;;
  esac
done

python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || {
  echo "gpu.sh: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine" >&2
  exit 1
}

LOGS=$(dirname "$OUT_FILE")  # the stages' logs, beside the JSON file (at most 8 files come back from $OUT)
STATUS=/tmp/vr-gpu-status  # their exit statuses
rm -rf "$STATUS"
mkdir -p "$LOGS" "$STATUS" /tmp/vr-site
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vr-site \
    .whl/*.whl \
    || { echo "gpu.sh: installing .whl/*.whl failed" >&2; exit 1; }
fi
export PYTHONPATH="/tmp/vr-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1  # nothing outside the machine can be reached

# skip NAME REASON: record why a stage cannot run on this machine
skip() {
  echo "gpu.sh: $1 skipped: $2" >&2
  python3 -c 'import json, sys; print(json.dumps({"stage": sys.argv[1], "skipped": sys.argv[2]}))' "$1" "$2" \
    >"$LOGS/$1.log"
}

# stage NAME CAP_S COMMAND...: run it with a timeout of CAP_S or what is left, output to NAME.log
stage() {
  local name=$1 cap=$2 left
  shift 2
  left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 20 ]; then
    skip "$name" "no time left in the 8 minutes"
    return
  fi
  echo "gpu.sh: $name (timeout ${cap} s): $*" >&2
  timeout -k 10 "$cap" "$@" >"$LOGS/$name.log" 2>&1
  echo "rc=$? timeout=${cap}s" >"$STATUS/$name"
}

stage peers 300 python3 benchmarks/peers.py --samplers euler:20 "$FEW_STEP" --batches 1 8 --repeats "$REPEATS"
# Batch 1 is in the peers stage; batch 64 once per setting after its warm-up.
stage paper_batch64 150 python3 benchmarks/peers.py --only ours --samplers euler:20 "$FEW_STEP" --batches 64 --repeats 1
# The compiled patch step (LocDiT and the planning step, CUDA graphs per batch bucket) against eager, on the
# shipped model.
stage compiled 90 python3 benchmarks/compiled.py --batches 1 64 --repeats 3
# The patch loop in bf16 (weights, matmuls, KV caches) against fp32, eager.
stage bf16 60 python3 benchmarks/compiled.py --variant bf16 --batches 1 64 --repeats 2
# The paper VAE's decode, fp32 against bf16, eager (compiling each variant would not fit).
stage decode 45 python3 benchmarks/decode.py --batches 1 16 --repeats 3 --no-compile

if python3 -c 'import fastapi, httpx, multipart; from ray import serve; import av; av.__version__' 2>/dev/null; then
  stage serve 120 python3 benchmarks/serve.py --preset paper --clients 4 --seconds 20 --video-seconds 10
else
  skip serve "needs Ray Serve, FastAPI and PyAV, which this image lacks and whose wheels do not fit in what travels"
fi
if python3 -c 'import ray, deepspeed, music21, mido, pyarrow, av; av.__version__' 2>/dev/null \
  && command -v fluidsynth >/dev/null; then
  stage train 150 python3 benchmarks/train.py --preset paper --gpus-per-worker 1 --workers 1 --clips 16 \
    --seconds 4 --steps 20 --batch-size 8
else
  skip train "needs Ray Train, DeepSpeed, music21, PyAV and fluidsynth, which this image lacks"
fi

# One JSON file: the device, then per stage its last JSON line, or its exit status and last lines.
python3 - "$LOGS" "$STATUS" "$OUT_FILE" peers paper_batch64 compiled bf16 decode serve train <<'EOF'
import json, os, sys

import torch

logs, status_dir, out, stages = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "stages": {}}
for name in stages:
    lines = open(os.path.join(logs, f"{name}.log")).read().splitlines()
    status_path = os.path.join(status_dir, name)
    status = open(status_path).read().strip() if os.path.exists(status_path) else "rc=0"  # a skip has none
    records = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    if records and status.split()[0] == "rc=0":
        result["stages"][name] = records[-1]
    else:  # timed out or failed: what it measured before, and how it ended
        result["stages"][name] = {"failed": status, "json_lines": records, "tail": lines[-15:]}
json.dump(result, open(out, "w"), indent=1)
print(json.dumps(result))
EOF
