#!/usr/bin/env bash
# H2G-Net on synthetic tumour slides within a CPU budget (2 cores, no GPU, ~30 minutes in all):
# does the refinement stage beat the patch-wise heatmap (the paper's central claim)?
#
#   bash benchmarks/recipes/synthetic_h2gnet_cpu.sh [OUT_DIR]
#
# 1. a cohort of synthetic pyramidal slides (loader/synthetic_tumour.py: 6 training, 2
#    validation, 2 test slides of 8,192² px at 1 µm/px, exact tumour masks, QuPath GeoJSON);
# 2. train.py --model h2gnet --profile cpu on it: stage detect (MobileNetV2 x0.5, 128 px patches
#    at 2 µm/px, hierarchical balanced batches, k-means clusters every 2 epochs) then stage
#    refine (U-Net on the 512² grid); each stage gets STAGE_BUDGET_S seconds of epochs
#    (train.time_budget_s; default 540, at most the profile's epochs);
# 3. infer.py on the test slides and process.py --gt with the cohort: per-slide DSC, precision
#    and recall on the refinement grid, averaged over the test slides.
# stdout's last line is one JSON object: those means for the patch-wise heatmap (>= 0.5) and the
# refined mask, the seconds of training and of inference per slide.
# THREADS (default 2) sets torch's threads.
set -euo pipefail

summary() {
    python - "$@" <<'PY'
import json, sys
path, trained, per_slide, total = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
metrics = json.load(open(path))
means = metrics["mean"]
scores = {f"{kind}_{key}": means[f"{kind}_{key}"]["mean"] for kind in ("patchwise", "refined")
          for key in ("dsc", "precision", "recall")}
scores = {key: None if value is None or value != value else round(value, 4) for key, value in scores.items()}
print(json.dumps({"recipe": "synthetic_h2gnet_cpu", "slides": f"test ({len(metrics['per_image'])})", **scores,
                  "train_seconds": trained, "infer_seconds_per_slide": round(per_slide, 1), "total_seconds": total}))
PY
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    local out="${1:-runs/synthetic_h2gnet_cpu}" threads="${THREADS:-2}" budget="${STAGE_BUDGET_S:-540}"
    local start trained inferred
    start=$(date +%s)
    mkdir -p "$out"
    if [[ ! -f "$out/cohort/cohort.json" ]]; then
        python -m loader.synthetic_tumour "$out/cohort" --train 6 --val 2 --test 2 --size 8192 >&2
    fi
    python train.py --model h2gnet --profile cpu --data "$out/cohort/cohort.json" --out "$out/run" \
        --device cpu --num-threads "$threads" --quiet --set "train.time_budget_s=$budget" >&2
    trained=$(( $(date +%s) - start ))
    rm -rf "$out/test_slides" "$out/infer" "$out/process"
    mkdir -p "$out/test_slides"
    for slide in "$out"/cohort/slides/test_*.tif; do ln -s "$(realpath "$slide")" "$out/test_slides/"; done
    inferred=$(date +%s)
    OMP_NUM_THREADS="$threads" python infer.py --model-path "$out/run/checkpoints/best.pt" --input "$out/test_slides" \
        --output "$out/infer" --device cpu --quiet >&2
    local per_slide
    per_slide=$(python -c "print(($(date +%s) - $inferred) / 2)")
    python process.py --input "$out/infer" --output "$out/process" --gt "$out/cohort/cohort.json" --quiet >&2
    summary "$out/process/metrics.json" "$trained" "$per_slide" "$(( $(date +%s) - start ))"
}

main "$@"
