#!/usr/bin/env bash
# HistoSegNet on CoNSeP from image-level labels only, within a CPU budget (2 cores, no GPU,
# under 30 minutes in all).
#
#   bash benchmarks/recipes/consep_histosegnet_cpu.sh [DATA_DIR] [OUT_DIR]
#
# 1. the fixed split of the shared CoNSeP patches by source image (benchmarks/recipes/consep_split.json:
#    352 training patches of 22 images, 80 validation patches of 5 images);
# 2. train.py --model histosegnet --profile consep on the training patches: the X1.7 classifier at
#    quarter width learns which of the 4 nucleus types (other, inflammatory, epithelial, spindle)
#    occur in each patch, labels taken from the patch's type map and nothing else; 15 % of its
#    source images are held out to validate once at the end, which sets the per-class ROC-optimal
#    decision thresholds stored in the checkpoint; training stops after $TRAIN_SECONDS (default
#    720) of wall time or 10 epochs (the validation at the end, Grad-CAM and CRF of each
#    held-out patch, takes about 6 minutes more on a shared 2-core machine);
# 3. infer.py on the validation patches (one 256 px window each, Grad-CAM per passing class) and
#    process.py: per-pixel maps of tissue (0), the 4 types (1-4) and white background (5) for the
#    three stages (label_gradcam/, label_adjusted/, label/ = CRF; overlays and GeoJSON alike);
# 4. the stages scored against the validation patches' type maps (background merged into
#    the non-nucleus class 0, which is what the type map calls it): one JSON line per stage with
#    per-class IoU, mIoU, fIoU and pixel accuracy pooled over the 80 patches.
# DATA_DIR defaults to $HISTOSEG_DATA/consep or ../shared/data/consep beside the checkout;
# TRAIN_OPTIONS adds train.py options; THREADS (default 2) the torch threads.
set -euo pipefail
cd "$(dirname "$0")/../.."

source benchmarks/recipes/consep_common.sh
DATA=$(consep_data "${1:-}")
OUT=${2:-runs/consep_histosegnet_cpu}
export OMP_NUM_THREADS="${THREADS:-2}"
mkdir -p "$OUT"
mapfile -t extra < <(words_of "${TRAIN_OPTIONS:-}")
start=$(date +%s)
python train.py --model histosegnet --profile consep --data "folder:$DATA" --out "$OUT/run" \
    --num-threads "$OMP_NUM_THREADS" --quiet --set "data.split=$SPLIT:$TRAIN_PART" --set train.val_every=1000 \
    --set "train.time_budget_s=${TRAIN_SECONDS:-720}" "${extra[@]}"
trained=$(date +%s)
link_valid_images "$DATA" "$OUT/valid_images"
python infer.py --model-path "$OUT/run/checkpoints/best.pt" --input "$OUT/valid_images" --output "$OUT/raw" --quiet
python process.py --input "$OUT/raw" --output "$OUT/pred" --quiet > /dev/null
end=$(date +%s)
python -m benchmarks.histosegnet_stages "$OUT/pred" "$DATA/types" --merge 5:0 \
    --names 0=non-nucleus,1=other,2=inflammatory,3=epithelial,4=spindle-shaped \
    --field recipe=consep_histosegnet_cpu "train_seconds=$((trained - start))" "total_seconds=$((end - start))"
