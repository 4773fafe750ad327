#!/usr/bin/env bash
# Cross-validation of a MoNuSeg CPU recipe over all 13 tiles (4 folds, at most ~30 minutes each).
#
#   bash benchmarks/recipes/monuseg_cv.sh FAMILY [DATA_DIR] [OUT_DIR] [FOLD ...]
#
# FAMILY is hovernet or fullnet. The folds are fixed in benchmarks/recipes/monuseg_folds.json:
# fold0 is the recipes' split (monuseg_split.json), folds 1-3 deal its 10 training tiles into
# 3 validation parts of 3-4 tiles, so every tile is validated once. Each fold runs the family's
# recipe (the same cpu profile, epoch planning and scoring) into OUT_DIR/foldK, skipping a fold whose
# scores are already there; FOLD arguments pick folds (default all 4). The last line is one
# JSON object: the per-image means over every validated tile, and each fold's mean PQ.
# DATA_DIR defaults to $HISTOSEG_DATA/monuseg or ../shared/data/monuseg beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

family=${1:?usage: monuseg_cv.sh FAMILY [DATA_DIR] [OUT_DIR] [FOLD ...]}
data=${2:-${HISTOSEG_DATA:-../shared/data}/monuseg}
out=${3:-runs/monuseg_${family}_cv}
shift $(($# < 3 ? $# : 3))
if (($#)); then folds=("$@"); else folds=(0 1 2 3); fi

recipe=benchmarks/recipes/monuseg_${family}_cpu.sh
[[ -f "$recipe" ]] || { echo "monuseg_cv.sh: no recipe $recipe for family '$family'" >&2; exit 2; }

for fold in "${folds[@]}"; do
    if [[ -f "$out/fold$fold/pred/metrics.json" ]]; then
        echo "fold$fold: scores found in $out/fold$fold, skipped"
        continue
    fi
    SPLIT=benchmarks/recipes/monuseg_folds.json TRAIN_PART=fold${fold}_train VALID_PART=fold${fold}_valid \
        bash "$recipe" "$data" "$out/fold$fold"
done

python - "$family" "$out" "${folds[@]}" <<'PY'
import json, sys
from pathlib import Path
family, out, folds = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
keys = ("pq", "dq", "sq", "dice", "aji", "aji_plus")
rows, fold_pq = [], {}
for fold in folds:
    per_image = json.loads((out / f"fold{fold}" / "pred" / "metrics.json").read_text())["per_image"]
    rows += per_image
    fold_pq[f"fold{fold}"] = round(sum(r["pq"] for r in per_image) / len(per_image), 4)
means = {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in keys}
print(json.dumps({"recipe": f"monuseg_{family}_cpu", "images": f"cross-validation ({len(rows)})", **means,
                  "fold_pq": fold_pq}))
PY
