#!/usr/bin/env bash
# CHR-Net on typed CoNSeP within a CPU budget (2 cores, no GPU, ~30 minutes in all): the same
# split and budget as benchmarks/recipes/consep_hovernet_cpu.sh (the typed HoVer-Net baseline).
#
#   bash benchmarks/recipes/consep_chrnet_cpu.sh [DATA_DIR] [OUT_DIR] [EPOCHS]
#   ABLATION=1 bash benchmarks/recipes/consep_chrnet_cpu.sh      # the HRFE losses at weight 0
#
# 1. the fixed split of the shared CoNSeP patches by source image (benchmarks/recipes/consep_split.json,
#    see consep_common.sh);
# 2. train.py --model chrnet --profile cpu with the `consep` profile's groupings of the 4 merged
#    types (HRFE-1 [other u inflammatory, epithelial, spindle], HRFE-2 [other u spindle,
#    inflammatory, epithelial]): encoder units [1,1,1,1] and all widths at a quarter, 134 px
#    windows (128 out) cut from the 256 px patches by the published augmentation, batch 2, Adam
#    1e-3 with cosine decay, bf16 autocast where the CPU has it; no validation, for EPOCHS epochs
#    (default: as many of the consep profile's 10 as fit the budget); with ABLATION=1 the HRFE-1 and
#    HRFE-2 cross-entropies get weight 0 (the HRFEs then learn only through the fused types);
# 3. infer.py on the validation patches, each one 262 px window (the published input, reflect
#    padding; its whole 256 px output kept, as the other CoNSeP recipes keep their one window; the
#    profile's 134 px windows would run 9 per patch), and process.py with the published post-processing (p > 40/255, H-minima of
#    the inverted marker, watershed, objects <= 10 px removed; foreground arg-max, majority type), its
#    H-minima depth h chosen by binary PQ among recipes.yaml's values (process.py --sweep; the
#    published 150 needs a fully trained marker; the table of every value in OUT/pred/sweep.csv).
# stderr gets the common scoring line; stdout's last line is one JSON object: binary PQ (mean over
# patches), mPQ+ and PQ+ per type (pooled), PQ per type (mean over patches), HoVer-Net's centroid
# F1 (detection and per type) and CHR-Net's coverage F1 (overall and per type); types are 1 other,
# 2 inflammatory, 3 epithelial, 4 spindle.
# DATA_DIR defaults to $HISTOSEG_DATA/consep or ../shared/data/consep beside the checkout;
# TRAIN_OPTIONS, BUDGET_MINUTES and THREADS as in consep_common.sh.
set -euo pipefail

# chrnet_summary RECIPE METRICS_JSON TRAIN_S TOTAL_S: the JSON line of scores from process.py's metrics.json.
chrnet_summary() {
    python - "$@" <<'PY'
import json, os, sys
recipe, path, trained, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
metrics = json.load(open(path))
pooled, means = metrics["pooled"], metrics["mean"]
scores = {"pq": means["pq"]["mean"], "mpq_plus": pooled["mpq_plus"]}
scores |= {f"pq_plus_type{t}": pooled[f"pq_plus_type{t}"] for t in range(1, 5)}
scores |= {f"pq_type{t}": means[f"pq_type{t}"]["mean"] for t in range(1, 5)}
scores |= {"f1_d": pooled["f1_d"]} | {f"f1_type{t}": pooled[f"f1_type{t}"] for t in range(1, 5)}
scores |= {"coverage_f1": pooled["coverage_f1"]} | {f"coverage_f1_type{t}": pooled[f"coverage_f1_type{t}"] for t in range(1, 5)}
scores = {key: None if value is None or value != value else round(value, 4) for key, value in scores.items()}
sweep = os.path.join(os.path.dirname(path), "sweep.json")
chosen = {json.load(open(sweep))["key"]: json.load(open(sweep))["best"]} if os.path.exists(sweep) else {}
print(json.dumps({"recipe": recipe, "images": f"valid ({len(metrics['per_image'])})", **scores, **chosen,
                  "train_seconds": trained, "total_seconds": total}))
PY
}

ABLATION_OPTIONS=(--set train.phases.0.loss_weights.hrfe1_ce=0.0 --set train.phases.0.loss_weights.hrfe2_ce=0.0)

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    source benchmarks/recipes/consep_common.sh
    # recipes.yaml's consep_chrnet: the consep profile's groupings (opt/chrnet.yaml) on the cpu profile
    # that consep_common.sh trains, and the planner's ceiling (the consep profile's epochs)
    local recipe=consep_chrnet_cpu options=()
    mapfile -t options < <(python -m benchmarks.recipes.settings consep_chrnet train-options)
    mapfile -t PROCESS_OPTIONS < <(python -m benchmarks.recipes.settings consep_chrnet process-options)
    [[ -z "${3:-}" ]] && options+=(--set "train.phases.0.epochs=$(python -m benchmarks.recipes.settings consep_chrnet cpu-ceiling)")
    if [[ -n "${ABLATION:-}" && "${ABLATION}" != 0 ]]; then
        recipe=consep_chrnet_cpu_ablation
        options+=("${ABLATION_OPTIONS[@]}")
    fi
    local data out start
    data=$(consep_data "${1:-}")
    out=${2:-runs/$recipe}
    start=$(date +%s)
    mkdir -p "$out"
    run_recipe chrnet "$data" "$out" "${3:-}" "${options[@]}" | tee "$out/common_scores.log" >&2
    local trained   # the training seconds of the common scoring line (its last line)
    trained=$(tail -n 1 "$out/common_scores.log" | python -c 'import json, sys; print(json.load(sys.stdin)["train_seconds"])')
    chrnet_summary "$recipe" "$out/pred/metrics.json" "$trained" "$(($(date +%s) - start))"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
