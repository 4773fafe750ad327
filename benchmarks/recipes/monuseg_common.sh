# Shared steps of the MoNuSeg CPU recipes (sourced, not run): the fixed split, and scoring a
# checkpoint on the split's validation tiles through infer.py + process.py.
# SPLIT, TRAIN_PART and VALID_PART name the split file and its two parts (the cross-validation
# script sets them per fold). TRAIN_OPTIONS adds train.py options after the recipe's own, split
# on whitespace (e.g. TRAIN_OPTIONS="--set train.seed=11"; later --set values win).
SPLIT=${SPLIT:-benchmarks/recipes/monuseg_split.json}
TRAIN_PART=${TRAIN_PART:-train}
VALID_PART=${VALID_PART:-valid}
IMAGE_EXT=.tif
source benchmarks/recipes/recipe_steps.sh

# budget_seconds FAMILY PATCHES DATA START [TRAIN_OPTION...]: the seconds left for training
# in the recipe's budget of $BUDGET_MINUTES (default 30) minutes since START (unix seconds) on
# this host, once the scoring of the $VALID_PART tiles of DATA is set aside: `python -m
# engine.budget --seconds` times one inference window with the profile's TTA (its reasoning goes
# to stderr). train.py gets them as train.time_budget_s and plans its epochs from the measured
# epoch times. Of the train.py options only the --set ones apply.
budget_seconds() {
    local family=$1 patches=$2 data=$3 start=$4 sets=() images
    shift 4
    mapfile -t sets < <(set_options "$@")
    images=$(mktemp -d)
    link_valid_images "$data" "$images"
    python -m engine.budget --model "$family" --profile cpu --data "$patches" --score-images "$images" --seconds \
        --budget-s "$(( ${BUDGET_MINUTES:-30} * 60 - ($(date +%s) - start) - SCORING_MARGIN_S ))" \
        --num-threads "${OMP_NUM_THREADS:-2}" "${sets[@]}"
    rm -rf "$images"
}
SCORING_MARGIN_S=60   # process.py + scoring of the validation tiles, and start-ups, outside the planner's estimate

# score_valid RECIPE CHECKPOINT DATA OUT START TRAINED: infer + process the validation tiles,
# print the checkpoint path and one JSON line of mean scores and times (seconds since START).
score_valid() {
    local recipe=$1 checkpoint=$2 data=$3 out=$4 start=$5 trained=$6
    link_valid_images "$data" "$out/valid_images"
    python infer.py --model-path "$checkpoint" --input "$out/valid_images" --output "$out/raw" --quiet
    python process.py --input "$out/raw" --output "$out/pred" --formats mat,geojson,png --gt "monuseg:$data" \
        --quiet > /dev/null
    local end
    end=$(date +%s)
    echo "checkpoint: $checkpoint"
    python - "$recipe" "$out/pred/metrics.json" "$((trained - start))" "$((end - start))" "$VALID_PART" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[2]))
means = metrics["mean"]
scores = {key: round(means[key]["mean"], 4) for key in ("pq", "dq", "sq", "dice", "aji", "aji_plus")}
images = f"{sys.argv[5]} ({len(metrics['per_image'])})"
print(json.dumps({"recipe": sys.argv[1], "images": images, **scores,
                  "train_seconds": int(sys.argv[3]), "total_seconds": int(sys.argv[4])}))
PY
}

# run_recipe FAMILY WIN STEP DATA OUT [EPOCHS [EXTRACT_OPTION...]]: cut the split's training
# tiles into WIN windows (STEP apart; extra extract_patches.py options after EPOCHS, which may
# be empty), train FAMILY's cpu profile on them without validation for EPOCHS epochs (default:
# as many of the profile's as fit budget_seconds), then score_valid. Run again on the same OUT,
# it resumes: extracted tiles, finished epochs (with the training budget and plan of the first
# start) and inferred tiles are kept.
run_recipe() {
    local family=$1 win=$2 step=$3 data=$4 out=$5 epochs=${6:-}
    shift $(($# < 6 ? $# : 6))
    export OMP_NUM_THREADS="${THREADS:-2}"
    mkdir -p "$out"
    local start trained resume=() extra=() plan=()
    mapfile -t extra < <(words_of "${TRAIN_OPTIONS:-}")
    [[ -f "$out/run/checkpoints/latest.pt" ]] && resume=(--resume)   # an interrupted run continues
    start=$(date +%s)
    python extract_patches.py monuseg "$data" "$out/patches" --win "$win" --step "$step" --mode valid \
        --split "$SPLIT:$TRAIN_PART" --format h5 --no-progress "$@"
    if [[ -n "$epochs" ]]; then
        plan=(--set "train.phases.0.epochs=$epochs")
    elif ((${#resume[@]})); then
        plan=(--set "train.time_budget_s=$(recorded_budget "$out/run")")
    else
        plan=(--set "train.time_budget_s=$(budget_seconds "$family" "$out/patches/$TRAIN_PART.h5" "$data" "$start" "${extra[@]}")")
    fi
    python train.py --model "$family" --profile cpu --data "$out/patches/$TRAIN_PART.h5" --out "$out/run" \
        --num-threads "$OMP_NUM_THREADS" --quiet --set data.val_fraction=0.0 --set train.val_every=1000 \
        "${plan[@]}" "${extra[@]}" "${resume[@]}"
    trained=$(date +%s)
    score_valid "monuseg_${family}_cpu" "$out/run/checkpoints/latest.pt" "$data" "$out" "$start" "$trained"
}
