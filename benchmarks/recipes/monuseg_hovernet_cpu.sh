#!/usr/bin/env bash
# HoVer-Net on MoNuSeg within a CPU budget (2 cores, no GPU, ~30 minutes in all).
#
#   bash benchmarks/recipes/monuseg_hovernet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#
# 1. the team's fixed split of the 13 MoNuSeg training tiles (benchmarks/recipes/monuseg_split.json:
#    10 for training, 3 for validation, grouped by image, seed 0);
# 2. the training tiles cut into 300x300 windows (step 164, valid mode, HDF5);
# 3. train.py --profile cpu (fast-mode HoVer-Net, encoder units [1,1,1,1] and decoders at half
#    width, batch 2, Adam 1e-3 with cosine decay) for EPOCHS epochs (default 5) with no
#    validation during training;
# 4. infer.py on the 3 validation tiles (1000x1000) and process.py scoring them against their
#    annotations; the last line is one JSON object of scores.
# DATA_DIR defaults to $HISTOSEG_DATA/monuseg or ../shared/data/monuseg beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA="${1:-${HISTOSEG_DATA:-../shared/data}/monuseg}"
OUT="${2:-runs/monuseg_hovernet_cpu}"
EPOCHS="${3:-5}"
THREADS="${THREADS:-2}"
SPLIT=benchmarks/recipes/monuseg_split.json
export OMP_NUM_THREADS="$THREADS"

mkdir -p "$OUT"
start=$(date +%s)
python extract_patches.py monuseg "$DATA" "$OUT/patches" --win 300 --step 164 --mode valid \
    --split "$SPLIT:train" --format h5 --no-progress
python train.py --model hovernet --profile cpu --data "$OUT/patches/train.h5" --out "$OUT/run" \
    --num-threads "$THREADS" --quiet --set data.val_fraction=0.0 --set train.val_every=1000 \
    --set "train.phases=[{name: all, epochs: $EPOCHS, batch_size: 2, freeze: [], optimizer: {name: adam, lr: 1.0e-3, betas: [0.9, 0.999], weight_decay: 0.0}, schedule: {name: cosine, min_factor: 0.05}, loss_weights: {np_bce: 1.0, np_dice: 1.0, hv_mse: 2.0, hv_msge: 1.0, tp_bce: 1.0, tp_dice: 1.0}}]"
trained=$(date +%s)

python - "$SPLIT" "$DATA" "$OUT/valid_images" <<'PY'
import json, os, sys
from pathlib import Path
split, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
for name in json.loads(split.read_text())["parts"]["valid"]:
    link = out / f"{name}.tif"
    if not link.exists():
        os.symlink((data / "images" / f"{name}.tif").resolve(), link)
PY
python infer.py --model-path "$OUT/run/checkpoints/latest.pt" --input "$OUT/valid_images" --output "$OUT/raw" --quiet
python process.py --input "$OUT/raw" --output "$OUT/pred" --formats mat,geojson,png --gt "monuseg:$DATA" --quiet > /dev/null
end=$(date +%s)

echo "checkpoint: $OUT/run/checkpoints/latest.pt"
python - "$OUT/pred/metrics.json" "$((trained - start))" "$((end - start))" <<'PY'
import json, sys
means = json.load(open(sys.argv[1]))["mean"]
scores = {key: round(means[key]["mean"], 4) for key in ("pq", "dq", "sq", "dice", "aji", "aji_plus")}
print(json.dumps({"recipe": "monuseg_hovernet_cpu", "images": "validation split (3)", **scores,
                  "train_seconds": int(sys.argv[2]), "total_seconds": int(sys.argv[3])}))
PY
