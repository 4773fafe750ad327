#!/usr/bin/env bash
# FullNet + varCE on MoNuSeg within a CPU budget (2 cores, no GPU, ~30 minutes in all).
#
#   bash benchmarks/recipes/monuseg_fullnet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#
# 1. the team's fixed split of the 13 MoNuSeg training tiles (benchmarks/recipes/monuseg_split.json,
#    the same as the HoVer-Net recipe: 10 for training, 3 for validation);
# 2. the training tiles cut into 16 patches of 250x250 each (the published MultiOrgan 4x4 grid);
# 3. train.py --profile cpu (see opt/fullnet.yaml) for EPOCHS epochs with no validation during
#    training (default: the profile's 28, or as many as fit the 30 minutes on this host:
#    train.time_budget_s from `python -m engine.budget --seconds`; BUDGET_MINUTES=N changes the budget);
# 4. infer.py on the 3 validation tiles (208 windows, overlap 80, no TTA) and process.py scoring
#    them against their annotations; the last line is one JSON object of scores.
# DATA_DIR defaults to $HISTOSEG_DATA/monuseg or ../shared/data/monuseg beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

source benchmarks/recipes/monuseg_common.sh
run_recipe fullnet "$(python -m benchmarks.recipes.settings monuseg_fullnet win)" \
    "$(python -m benchmarks.recipes.settings monuseg_fullnet step)" "${1:-${HISTOSEG_DATA:-../shared/data}/monuseg}" "${2:-runs/monuseg_fullnet_cpu}" "${3:-}"
