# Shared steps of the typed CoNSeP CPU recipes (sourced, not run): the fixed split of the shared
# CoNSeP patches, training a family's cpu profile on its training part within the budget, and
# scoring checkpoints on its validation patches through infer.py + process.py.
#
# The data is ../shared/data/consep (or $HISTOSEG_DATA/consep): 432 patches 256x256 at 40x named
# train_<image>_<patch>, read as `folder:DATA` (images/*.jpg, inst/*.npy, types/*.png with the
# 4 merged CoNSeP types). SPLIT names the split file (default benchmarks/recipes/consep_split.json:
# 22 source images = 352 patches for training, 5 = 80 for validation, grouped by <image>, seed 0;
# remake it with `python -m loader.splits folder DATA OUT.json --valid-fraction 0.2 --seed 0
# --group-regex '^train_(\d+)_'`); TRAIN_PART and VALID_PART name its parts.
# PROCESS_OPTIONS (an array a recipe sets: its recipes.yaml `process`) adds process.py options.
# TRAIN_OPTIONS adds train.py options after the recipe's own, split on whitespace (later --set
# values win); BUDGET_MINUTES (default 30) is the budget of one recipe on this host; THREADS
# (default 2) the torch threads.
SPLIT=${SPLIT:-benchmarks/recipes/consep_split.json}
TRAIN_PART=${TRAIN_PART:-train}
VALID_PART=${VALID_PART:-valid}
IMAGE_EXT=.jpg
source benchmarks/recipes/recipe_steps.sh
SCORING_MARGIN_S=60   # process.py + scoring of the validation patches, and start-ups, outside the planner's estimate

# consep_data [DATA]: the CoNSeP folder: DATA, else $HISTOSEG_DATA/consep, else ../shared/data/consep.
consep_data() {
    echo "${1:-${HISTOSEG_DATA:-../shared/data}/consep}"
}

# budget_seconds FAMILY DATA START [TRAIN_OPTION...]: the seconds left for training in the budget
# of $BUDGET_MINUTES minutes since START (unix seconds) once the scoring of the $VALID_PART
# patches is set aside (`python -m engine.budget --seconds`, its reasoning on stderr). Of the
# train.py options only the --set ones apply.
budget_seconds() {
    local family=$1 data=$2 start=$3 sets=() images
    shift 3
    mapfile -t sets < <(set_options "$@")
    images=$(mktemp -d)
    link_valid_images "$data" "$images"
    python -m engine.budget --model "$family" --profile cpu --data "folder:$data" --score-images "$images" --seconds \
        --budget-s "$(( ${BUDGET_MINUTES:-30} * 60 - ($(date +%s) - start) - SCORING_MARGIN_S ))" \
        --num-threads "${OMP_NUM_THREADS:-2}" --set "data.split=$SPLIT:$TRAIN_PART" "${sets[@]}"
    rm -rf "$images"
}

# score_valid RECIPE DATA OUT START TRAINED CHECKPOINT...: infer (several checkpoints: their
# ensemble) and process the validation patches, print the checkpoints and one JSON line:
# mPQ+ and multi-class R^2 (pooled over the patches; counts over each whole patch), binary PQ
# (mean over patches), PQ+ per type (1 other, 2 inflammatory, 3 epithelial, 4 spindle) and the
# seconds since START.
score_valid() {
    local recipe=$1 data=$2 out=$3 start=$4 trained=$5
    shift 5
    link_valid_images "$data" "$out/valid_images"
    python infer.py --model-path "$@" --input "$out/valid_images" --output "$out/raw" --quiet
    python process.py --input "$out/raw" --output "$out/pred" --formats mat,geojson,png --gt "folder:$data" \
        --type-info opt/hovernet_type_info/consep.json ${PROCESS_OPTIONS[@]+"${PROCESS_OPTIONS[@]}"} --quiet > /dev/null
    local end
    end=$(date +%s)
    echo "checkpoints: $*"
    python - "$recipe" "$out/pred/metrics.json" "$((trained - start))" "$((end - start))" "$VALID_PART" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[2]))
pooled, means = metrics["pooled"], metrics["mean"]
scores = {"mpq_plus": pooled["mpq_plus"], "r2": pooled["r2"], "pq": means["pq"]["mean"]}
scores |= {f"pq_type{t}": pooled[f"pq_plus_type{t}"] for t in range(1, 5)}
scores = {key: None if value is None else round(value, 4) for key, value in scores.items()}
images = f"{sys.argv[5]} ({len(metrics['per_image'])})"
print(json.dumps({"recipe": sys.argv[1], "images": images, **scores,
                  "train_seconds": int(sys.argv[3]), "total_seconds": int(sys.argv[4])}))
PY
}

# run_recipe FAMILY DATA OUT EPOCHS [TRAIN_OPTION...]: train FAMILY's cpu profile on the $TRAIN_PART
# patches without validation for EPOCHS epochs (empty: as many of the profile's as fit
# budget_seconds), with the family's TRAIN_OPTIONs and then $TRAIN_OPTIONS, and score_valid its
# latest checkpoint. Run again on the same OUT, it resumes: finished epochs (with the budget of
# the first start) and inferred patches are kept.
run_recipe() {
    local family=$1 data=$2 out=$3 epochs=${4:-}
    shift 4
    export OMP_NUM_THREADS="${THREADS:-2}"
    mkdir -p "$out"
    local start trained resume=() extra=() plan=()
    mapfile -t extra < <(words_of "${TRAIN_OPTIONS:-}")
    extra=("$@" "${extra[@]}")
    [[ -f "$out/run/checkpoints/latest.pt" ]] && resume=(--resume)   # an interrupted run continues
    start=$(date +%s)
    if [[ -n "$epochs" ]]; then
        plan=(--set "train.phases.0.epochs=$epochs")
    elif ((${#resume[@]})); then
        plan=(--set "train.time_budget_s=$(recorded_budget "$out/run")")
    else
        plan=(--set "train.time_budget_s=$(budget_seconds "$family" "$data" "$start" "${extra[@]}")")
    fi
    python train.py --model "$family" --profile cpu --data "folder:$data" --out "$out/run" \
        --num-threads "$OMP_NUM_THREADS" --quiet --set "data.split=$SPLIT:$TRAIN_PART" --set data.val_fraction=0.0 \
        --set train.val_every=1000 "${plan[@]}" "${extra[@]}" "${resume[@]}"
    trained=$(date +%s)
    score_valid "consep_${family}_cpu" "$data" "$out" "$start" "$trained" "$out/run/checkpoints/latest.pt"
}
