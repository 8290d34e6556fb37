#!/usr/bin/env bash
# The GPU checks in one run, most important first: the sampler bench (float32, CUDA graphs), the engine tests on
# CUDA, the CLI in float32 and bfloat16, then the bfloat16 bench, a profile of N = 100 and the no-graph bench.
# Each step has a time limit and its output goes to OUT_DIR/gpu_checks.log; a failing step is reported and the
# next one still runs.
#
#   TEST_DATA_DIR=../shared/data bash bench/gpu_checks.sh [OUT_DIR]     (default: outputs/gpu_checks)
#
# Needs the test extras (bash setup_venv.sh --test) for the reference package and random-weight checkpoints.
# PYTHON picks the interpreter (default .venv/bin/python). Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_checks}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-.venv/bin/python}
log="$out/gpu_checks.log"
: >"$log"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 KRONOS_GPU_REPORT="$out/report.jsonl"
: "${TEST_DATA_DIR:?set TEST_DATA_DIR to the shared data folder}"
bars="$TEST_DATA_DIR/QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"
ckpt=$(mktemp -d)
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
  start=$(date +%s%N)
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

step environment 60 bash -c "nvidia-smi -L; $py -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\",
  torch.version.cuda, torch.cuda.get_device_name(0), \"capability\", torch.cuda.get_device_capability(0))'"
step bench_fp32 200 "$py" bench/bench_sampler.py --device cuda --ns 1,100,1000,10000 --ref-ns 1
step engine_tests 240 env KRONOS_TEST_DEVICE=cuda "$py" -m pytest -q -rs -p no:cacheprovider \
  tests/test_kronos_cuda.py tests/test_kronos_exact.py tests/test_kronos_batch.py tests/test_kronos_sampling.py \
  tests/test_kronos_static.py
step checkpoint 60 "$py" -c "import sys; sys.path.insert(0, 'tests'); from support.kronos_checkpoints import \
write_checkpoint_pair as w; print(w('$ckpt', 'small', seed=0))"  # the README sample's checkpoint
for dtype in float32 bfloat16; do
  step "cli_$dtype" 60 "$py" cli_kronos_prob_qqq.py --source csv --csv "$bars" --asof 2025-06-25T15:00:00Z \
    --model "$ckpt/Kronos-small" --tokenizer "$ckpt/Kronos-Tokenizer-small" --seed 42 --device cuda \
    --dtype "$dtype" --out "$out/cli_$dtype" --no-plot
done
step bench_bf16 150 "$py" bench/bench_sampler.py --device cuda --dtype bfloat16 --ns 1,100,1000,10000 --ref-ns ""
step profile_n100 90 "$py" bench/profile_sampler.py --device cuda --n 100 --rows 30
step bench_fp32_no_graphs 120 "$py" bench/bench_sampler.py --device cuda --no-graphs --ns 100,1000 --ref-ns ""
rm -rf "$ckpt"
tar czf "$out/cli_outputs.tgz" -C "$out" cli_float32 cli_bfloat16 2>/dev/null && rm -rf "$out/cli_float32" "$out/cli_bfloat16"
echo "failed steps: $failed" | tee -a "$log"
exit "$failed"
