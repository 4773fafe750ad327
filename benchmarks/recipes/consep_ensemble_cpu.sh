#!/usr/bin/env bash
# The U-Net and the typed HoVer-Net of the CoNSeP CPU recipes as one ensemble, on the same
# validation patches (run consep_unet_cpu.sh and consep_hovernet_cpu.sh first).
#
#   bash benchmarks/recipes/consep_ensemble_cpu.sh [DATA_DIR] [UNET_OUT] [HOVERNET_OUT] [OUT_DIR]
#
# infer.py --model-path UNET HOVERNET averages the two networks' maps (each with its own TTA,
# window and colour normalisation); the U-Net's post-processing (first checkpoint) turns them into
# nuclei; the last line is one JSON object of the same scores as the single recipes.
set -euo pipefail
cd "$(dirname "$0")/../.."

source benchmarks/recipes/consep_common.sh
export OMP_NUM_THREADS="${THREADS:-2}"
unet=${2:-runs/consep_unet_cpu}/run/checkpoints/latest.pt
hovernet=${3:-runs/consep_hovernet_cpu}/run/checkpoints/latest.pt
for checkpoint in "$unet" "$hovernet"; do
    [[ -f $checkpoint ]] || { echo "error: $checkpoint not found; run its recipe first" >&2; exit 2; }
done
start=$(date +%s)
score_valid consep_ensemble_cpu "$(consep_data "${1:-}")" "${4:-runs/consep_ensemble_cpu}" "$start" "$start" "$unet" "$hovernet"
