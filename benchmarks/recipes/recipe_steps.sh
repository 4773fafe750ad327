# Steps shared by the CoNSeP and MoNuSeg CPU recipes (sourced by consep_common.sh and
# monuseg_common.sh, which set SPLIT, TRAIN_PART, VALID_PART and IMAGE_EXT).

# words_of TEXT: the whitespace-separated words of TEXT, one per line (nothing for an empty TEXT).
words_of() {
    local words=()
    read -r -a words <<< "${1:-}"
    ((${#words[@]})) && printf '%s\n' "${words[@]}"
    return 0
}

# set_options [OPTION...]: the "--set KEY=VALUE" pairs among train.py options, one word per line.
set_options() {
    while (($#)); do
        [[ $1 == --set && $# -ge 2 ]] && { printf '%s\n' --set "$2"; shift; }
        shift
    done
    return 0
}

# link_valid_images DATA OUT: symlink the $VALID_PART images of $SPLIT (DATA/images/<name>$IMAGE_EXT) into OUT.
link_valid_images() {
    python - "$SPLIT" "$VALID_PART" "$1" "$2" "$IMAGE_EXT" <<'PY'
import json, os, sys
from pathlib import Path
split, part, data, out, ext = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
out.mkdir(parents=True, exist_ok=True)
for name in json.loads(split.read_text())["parts"][part]:
    link = out / f"{name}{ext}"
    if not link.exists():
        os.symlink((data / "images" / f"{name}{ext}").resolve(), link)
PY
}

# recorded_budget RUN_DIR: the run's train.time_budget_s, from its run.yaml.
recorded_budget() {
    python - "$1/run.yaml" <<'PY'
import sys
import yaml
print(yaml.safe_load(open(sys.argv[1]))["config"]["train"]["time_budget_s"])
PY
}
