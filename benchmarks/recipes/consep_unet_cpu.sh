#!/usr/bin/env bash
# The CoNIC-winning U-Net on typed CoNSeP within a CPU budget (2 cores, no GPU, ~30 minutes in all).
#
#   bash benchmarks/recipes/consep_unet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#
# 1. the fixed split of the shared CoNSeP patches by source image (benchmarks/recipes/consep_split.json:
#    352 training patches of 22 images, 80 validation patches of 5 images);
# 2. train.py --model unet --profile cpu (SE-ResNeXt encoder with units [1,1,1,1] at quarter width,
#    cardinality 8, stride-1 stem; one shared decoder at quarter width with Dropout2d 0.5; heads
#    np/hv/tp with 4 types + background; the published loss 2 BCE + 2 Dice, 2 MSE + 2 MSGE on
#    tanh, 2 focal; the published augmentation; Adam 3e-3, batch 4, cosine decay; bf16 autocast
#    where the CPU has it) on the training patches with no validation, for EPOCHS epochs (default:
#    the profile's 12, or as many as fit the 30 minutes on this host, see consep_common.sh);
# 3. infer.py (TTA x3: identity, horizontal and vertical flips; one window per 256 px patch) on the
#    validation patches and process.py (HoVer-Net's post-processing at 40x, majority type per
#    nucleus) scoring them; the last line is one JSON object: mPQ+, R^2, binary PQ, PQ+ per type.
# DATA_DIR defaults to $HISTOSEG_DATA/consep or ../shared/data/consep beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

source benchmarks/recipes/consep_common.sh
mapfile -t options < <(python -m benchmarks.recipes.settings consep_unet train-options)   # recipes.yaml
run_recipe unet "$(consep_data "${1:-}")" "${2:-runs/consep_unet_cpu}" "${3:-}" "${options[@]}"
