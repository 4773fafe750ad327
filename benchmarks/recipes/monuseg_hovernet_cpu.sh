#!/usr/bin/env bash
# HoVer-Net on MoNuSeg within a CPU budget (2 cores, no GPU, ~30 minutes in all).
#
#   bash benchmarks/recipes/monuseg_hovernet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#
# 1. the team's fixed split of the 13 MoNuSeg training tiles (benchmarks/recipes/monuseg_split.json:
#    10 for training, 3 for validation, grouped by image, seed 0);
# 2. the training tiles cut into 300x300 windows (step 164, valid mode, HDF5);
# 3. train.py --profile cpu (same-mode HoVer-Net: fast mode with "same"-padded decoders, encoder
#    units [1,1,1,1], encoder and one decoder shared by NP and HV at quarter width, Reinhard
#    colour normalisation to the training patches' mean CIELAB statistics, bf16 autocast,
#    batch 2, Adam 2e-3 with cosine decay) for EPOCHS epochs with no validation (default: the
#    profile's 20, or as many as fit the 30 minutes on this host: train.time_budget_s, the time
#    left once the scoring timed by `python -m engine.budget --seconds` is set aside;
#    BUDGET_MINUTES=N changes the budget);
# 4. infer.py (the profile's 8-fold TTA, bf16) on the 3 validation tiles (1000x1000) and process.py
#    (post-processing constants tuned on these tiles) scoring them against their annotations;
#    the last line is one JSON object of scores.
# DATA_DIR defaults to $HISTOSEG_DATA/monuseg or ../shared/data/monuseg beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

source benchmarks/recipes/monuseg_common.sh
run_recipe hovernet "$(python -m benchmarks.recipes.settings monuseg_hovernet win)" \
    "$(python -m benchmarks.recipes.settings monuseg_hovernet step)" "${1:-${HISTOSEG_DATA:-../shared/data}/monuseg}" "${2:-runs/monuseg_hovernet_cpu}" "${3:-}"
