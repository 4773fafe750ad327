#!/usr/bin/env bash
# FullNet + varCE on MoNuSeg within a CPU budget (2 cores, no GPU).
#
#   bash benchmarks/recipes/monuseg_fullnet_cpu.sh [WORK_DIR] [EPOCHS]
#
# 1. grouped split of the 13 MoNuSeg training tiles: 10 for training, 3 held out (seed 0);
# 2. the training tiles cut into 16 patches of 250x250 each (the published MultiOrgan split);
# 3. train.py --profile cpu (growth 8, 4 layers per block, batch 2, published augmentations,
#    ternary labels, weight maps, varCE) for EPOCHS epochs (default 6), without gradient
#    accumulation (more optimiser steps in a short budget); 5 % of the patches validate;
# 4. infer.py on the 3 held-out 1000x1000 tiles (208 windows, overlap 80, no TTA) and
#    process.py scoring them against their annotations (binary PQ, AJI, Dice).
# Data: $HISTOSEG_DATA/monuseg (default ../shared/data/monuseg beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA="${HISTOSEG_DATA:-../shared/data}/monuseg"
WORK="${1:-runs/monuseg_fullnet_cpu}"
EPOCHS="${2:-6}"
THREADS="${THREADS:-2}"
export OMP_NUM_THREADS="$THREADS"

mkdir -p "$WORK"
start=$(date +%s)
python -m loader.splits monuseg "$DATA" "$WORK/split.json" --valid-fraction 0.25 --seed 0
python extract_patches.py monuseg "$DATA" "$WORK/patches" --win 250 --step 250 --mode valid \
    --split "$WORK/split.json:train" --overwrite --no-progress
python train.py --model fullnet --profile cpu --data "$WORK/patches/train" --out "$WORK/run" \
    --num-threads "$THREADS" --quiet \
    --set data.val_fraction=0.05 --set train.accumulate=1 \
    --set "train.phases=[{name: all, epochs: $EPOCHS, batch_size: 2, freeze: [], optimizer: {name: adam, lr: 1.0e-3, betas: [0.9, 0.99], weight_decay: 1.0e-4}, schedule: {name: constant}, loss_weights: {ce: 1.0, var: 1.0}}]"
trained=$(date +%s)

mkdir -p "$WORK/heldout"
python - "$WORK/split.json" "$DATA" "$WORK/heldout" <<'PY'
import json, os, sys
from pathlib import Path
split, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
for name in json.loads(Path(split).read_text())["parts"]["valid"]:
    target = out / f"{name}.tif"
    if not target.exists():
        os.symlink((data / "images" / f"{name}.tif").resolve(), target)
PY
python infer.py --model-path "$WORK/run/checkpoints/latest.pt" --input "$WORK/heldout" --output "$WORK/raw" \
    --no-tta --quiet
python process.py --input "$WORK/raw" --output "$WORK/out" --formats png --gt "monuseg:$DATA" --quiet
end=$(date +%s)
echo "training $((trained - start)) s, held-out inference + scoring $((end - trained)) s, total $((end - start)) s"
echo "held-out scores: $WORK/out (metrics files written by process.py)"
