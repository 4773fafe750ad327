#!/usr/bin/env bash
# HistoSegNet where the answer is known: synthetic tissue tiles (loader/synthetic_tissue.py) with
# patch labels only for training, pixel truth for scoring (2 CPU cores, a few minutes).
#
#   bash benchmarks/recipes/synthetic_histosegnet_cpu.sh [OUT_DIR] [TILES]
#
# 1. train.py --model histosegnet --profile demo --data synthetic: 48 training tiles with their
#    patch labels (which of epithelium, stroma, lymphoid, adipose cover >= 2 % of the tile), 8
#    validation tiles that set the ROC-optimal thresholds;
# 2. TILES (default 32) held-out tiles of another seed with their pixel truth;
# 3. infer.py and process.py --gt on them: the three stages' label maps and, per stage, per-class
#    IoU, mIoU, fIoU and pixel accuracy (metrics.csv columns <stage>:<score>);
# 4. one JSON line per stage (Grad-CAM, adjusted, CRF).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-runs/synthetic_histosegnet_cpu}
export OMP_NUM_THREADS="${THREADS:-2}"
mkdir -p "$OUT"
start=$(date +%s)
python train.py --model histosegnet --profile demo --data synthetic --out "$OUT/run" --num-threads "$OMP_NUM_THREADS" --quiet
trained=$(date +%s)
python -m loader.synthetic_tissue "$OUT/tiles" --n "${2:-32}" --seed 1000 > /dev/null
python infer.py --model-path "$OUT/run/checkpoints/best.pt" --input "$OUT/tiles/images" --output "$OUT/raw" --quiet
python process.py --input "$OUT/raw" --output "$OUT/pred" --gt "$OUT/tiles/tissue" --quiet > /dev/null
end=$(date +%s)
python -m benchmarks.histosegnet_stages "$OUT/pred" "$OUT/tiles/tissue" \
    --names 0=background,1=epithelium,2=stroma,3=lymphoid,4=adipose \
    --field recipe=synthetic_histosegnet_cpu "train_seconds=$((trained - start))" "total_seconds=$((end - start))"
