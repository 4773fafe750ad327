#!/usr/bin/env bash
# Checks and timings for a CUDA host, in one command (about 6 minutes on an H200):
#
#   bash benchmarks/gpu_check.sh [DATA_DIR] [OUT_DIR]
#
# 1. the CUDA tests (`python -m pytest -m cuda`: CPU/CUDA agreement of every network, bf16
#    autocast and channels_last, a HoVer-Net training run, resume after SIGKILL, one NCCL rank
#    under torchrun, infer.py on CUDA against CPU);
# 2. training steps/s on CUDA with 8 loader workers (`bench_train.py --all --warmup`: the cpu
#    profiles and the published networks' first phase, timed after a warm-up epoch) and
#    inference tiles/s (`bench_infer.py --grid 8`);
# 3. when DATA_DIR holds MoNuSeg (images/*.tif, annotations/*.xml), the MoNuSeg recipe
#    (`monuseg_hovernet_cpu.sh`: the cpu profile's 3,600 steps) on CUDA, with 8 loader workers.
# Each step has its own time limit and log under OUT_DIR; the last lines are the JSON results.
# DATA_DIR defaults to $HISTOSEG_DATA/monuseg or ../shared/data/monuseg beside the checkout.
set -uo pipefail
cd "$(dirname "$0")/.."

data=${1:-${HISTOSEG_DATA:-../shared/data}/monuseg}
out=${2:-runs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output into OUT/NAME.log.
step() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc in $(( $(date +%s) - start )) s"
    ((rc == 0)) || { status=1; tail -n 30 "$out/$name.log"; }
}

python - <<'PY' | tee "$out/device.txt"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY
((PIPESTATUS[0] == 0)) || exit 2
step cuda_tests 150 python -m pytest -q -m cuda -p no:cacheprovider -rs
train_bench=(python benchmarks/bench_train.py --device cuda --set data.num_workers=8)
step bench_train 180 "${train_bench[@]}" --all --warmup --steps 50
step bench_infer 60 python benchmarks/bench_infer.py --device cuda --grid 8 --only infer
if [[ -d "$data/images" ]]; then
    step recipe 240 env THREADS=8 TRAIN_OPTIONS="--set data.num_workers=8" \
        bash benchmarks/recipes/monuseg_hovernet_cpu.sh "$data" "$out/recipe" 20
fi
grep -h '^{' "$out"/bench_*.log "$out/recipe.log" 2>/dev/null
exit "$status"
