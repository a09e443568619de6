#!/usr/bin/env bash
# The GPU checks in one run, each step time-boxed so one failure does not cost the others:
# the CUDA kernel tests, the stats-kernel benchmark, long-context compression (16k/32k) and probe overhead.
# Logs and result JSON go to $LOGS (default benchmarks/results/gpu_logs).
#
#   bash benchmarks/gpu_checks.sh [WHEEL_DIR] [TOKENIZER_DIR] [STEPS...]
# WHEEL_DIR: wheels to install first (for a machine whose packages differ from pyproject's pins), or "-".
# TOKENIZER_DIR: the bundled model's tokenizer folder (default: the converted bundled model's).
# STEPS: any of kernels stats long probe (default: all).
set -u
LOGS=${LOGS:-${OUT:-benchmarks/results/gpu_logs}}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
WHEELS=${1:--}; TOKDIR=${2:-}; shift $(( $# < 2 ? $# : 2 ))
STEPS=${*:-kernels stats long probe}
if [ "$WHEELS" != "-" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used,temperature.gpu --format=csv
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"
  tail -n 14 "$LOGS/$name.log"
}
tok_arg=(); [ -n "$TOKDIR" ] && tok_arg=(--tokenizer "$TOKDIR")
for s in $STEPS; do
  case $s in
    kernels) step kernels 150 python3 -m pytest -q -p no:cacheprovider tests/kernels -k "not interpreter" -ra ;;
    stats) step stats 170 python3 benchmarks/stats_kernel.py --min-time 0.3 --max-reps 30 ;;
    long) step long 170 python3 benchmarks/long_context_compression.py "${tok_arg[@]}" --rounds 2 ;;
    probe) step probe 170 python3 benchmarks/probe_overhead.py --device cuda --prompt-tokens 4096 --pairs 6 ;;
  esac
  cp benchmarks/results/*h200*.json benchmarks/results/*cuda*.json "$LOGS"/ 2>/dev/null
done
ls -la "$LOGS"
