#!/usr/bin/env bash
# Typed HoVer-Net on CoNSeP within a CPU budget (2 cores, no GPU, ~30 minutes in all): the
# baseline of benchmarks/recipes/consep_unet_cpu.sh, on the same split and budget.
#
#   bash benchmarks/recipes/consep_hovernet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#
# 1. the fixed split of the shared CoNSeP patches by source image (benchmarks/recipes/consep_split.json);
# 2. train.py --model hovernet --profile cpu with recipes.yaml's consep_hovernet options (same-mode HoVer-Net: encoder units [1,1,1,1] at
#    quarter width, one shared decoder at quarter width, Reinhard normalisation to the training
#    patches, bf16 autocast; batch 2, Adam 2e-3, cosine decay) with a type branch of 4 types +
#    background (model.nr_types=5), on the whole 256 px patches (data.patch_size=256) with the
#    PanNuke-style augmentation for patches without context (flips, blur/noise, colour; no affine),
#    for EPOCHS epochs with no validation (default: as many of the profile's 20 as fit the budget);
# 3. infer.py (the profile's 8-fold TTA; one window per 256 px patch) on the validation patches and process.py with the
#    published post-processing constants (np_threshold 0.5, min_marker_area 10; the cpu profile's
#    own are tuned on MoNuSeg) scoring them; the last line is one JSON object: mPQ+, R^2, binary PQ
#    and PQ+ per type.
# DATA_DIR defaults to $HISTOSEG_DATA/consep or ../shared/data/consep beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

source benchmarks/recipes/consep_common.sh
mapfile -t options < <(python -m benchmarks.recipes.settings consep_hovernet train-options)   # recipes.yaml
run_recipe hovernet "$(consep_data "${1:-}")" "${2:-runs/consep_hovernet_cpu}" "${3:-}" "${options[@]}"
