#!/usr/bin/env bash
# The GPU path on a machine with CUDA (docs/benchmarks.md, "GPU path"): LoRA on a random 0.5B
# Qwen2 model, vLLM serving base + adapter (--enable-lora --lora-modules), Shadowtune shadowing
# the route's calls to the adapter. Needs the train extra and vllm installed; downloads nothing.
# Usage: bash bench/gpu_check.sh [--params 0.5] [--requests 100]   (or --cpu to check it here)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
if [[ " $* " != *" --cpu "* ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU: use --cpu"; exit 2; }
  $PY -c "import vllm, sys; print('vllm', vllm.__version__)" || { echo "vllm is not installed (pip install 'shadowtune[vllm]')"; exit 2; }
fi
out=${OUT:-/tmp}/gpu_check.json
timeout "${GPU_CHECK_TIMEOUT:-540}" $PY bench/gpu_check.py --out "$out" "$@"
