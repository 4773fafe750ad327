#!/usr/bin/env bash
# FullNet + varCE on MoNuSeg within a CPU budget (2 cores, no GPU, ~30 minutes in all).
#
#   bash benchmarks/recipes/monuseg_fullnet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#
# 1. the team's fixed split of the 13 MoNuSeg training tiles (benchmarks/recipes/monuseg_split.json,
#    the same as the HoVer-Net recipe: 10 for training, 3 for validation);
# 2. the training tiles cut into 16 patches of 250x250 each (the published MultiOrgan 4x4 grid);
# 3. train.py --profile cpu (see opt/fullnet.yaml) for EPOCHS epochs with no validation during
#    training;
# 4. infer.py on the 3 validation tiles (208 windows, overlap 80, no TTA) and process.py scoring
#    them against their annotations; the last line is one JSON object of scores.
# DATA_DIR defaults to $HISTOSEG_DATA/monuseg or ../shared/data/monuseg beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA="${1:-${HISTOSEG_DATA:-../shared/data}/monuseg}"
OUT="${2:-runs/monuseg_fullnet_cpu}"
EPOCHS="${3:-}"
THREADS="${THREADS:-2}"
source benchmarks/recipes/monuseg_common.sh
export OMP_NUM_THREADS="$THREADS"
EPOCHS="${EPOCHS:-$(budget_epochs fullnet)}"     # half the epochs where the CPU lacks bf16

mkdir -p "$OUT"
start=$(date +%s)
python extract_patches.py monuseg "$DATA" "$OUT/patches" --win 250 --step 250 --mode valid \
    --split "$SPLIT:train" --format h5 --no-progress
python train.py --model fullnet --profile cpu --data "$OUT/patches/train.h5" --out "$OUT/run" \
    --num-threads "$THREADS" --quiet --set data.val_fraction=0.0 --set train.val_every=1000 \
    ${EPOCHS:+--set "train.phases.0.epochs=$EPOCHS"}
trained=$(date +%s)

score_valid monuseg_fullnet_cpu "$OUT/run/checkpoints/latest.pt" "$DATA" "$OUT" "$start" "$trained"
