#!/usr/bin/env bash
# Issue 24's CPU paired comparison: the old hand-written head (the last commit that has it,
# OLD_COMMIT) vs the FCOS detector (this checkout), same manifest, split and seeds, both
# sources; one arm after the other (nice'd, for a background run), then docs/experiments/localisation/head_compare.py.
#   SIZE=384 SEEDS="42" EXTRA="" bash docs/experiments/localisation/cpu_head_pair.sh          # the full lite0_loc.yaml
#   SIZE=224 SEEDS="1 2 42" CONFIG=configs/lite0.yaml \
#     EXTRA="--set data.limit_per_split=1000" bash docs/experiments/localisation/cpu_head_pair.sh   # the reduced recipe
# Data: DATA (default ../shared/data) with fracatlas/ and bone_fracture_yolo/. Writes
# OUT/runs/{old,new}_<SIZE>_s<seed>, OUT/logs and OUT/head_compare_<SIZE>.md. A finished arm is
# kept, an interrupted one resumed from its last epoch (`train --resume`). At 384 px, alone on a
# 2-core CPU, an arm takes about 17 min per epoch (about 2 h for 6 epochs and the test split's
# predictions; two arms side by side take twice as long each); 11 min at the 224 px recipe.
# A session shorter than both arms trains one (ARMS=old or ARMS=new). Each finished arm's record
# without weights (predictions, metrics, model.json, config, history) is kept in STORED (default
# docs/experiments/localisation/head_pair, committed), and a record found there stands for a finished arm, so
# the other arm, trained later on another machine, is still paired image by image.
set -eu
OLD_COMMIT=${OLD_COMMIT:-459ecb2}
SIZE=${SIZE:-384}
SEEDS=${SEEDS:-42}
CONFIG=${CONFIG:-configs/lite0_loc.yaml}
EXTRA=${EXTRA:-}
ARMS=${ARMS:-old new}  # e.g. ARMS=old: train one arm only (a session too short for both)
STORED=${STORED:-$PWD/docs/experiments/localisation/head_pair}
DATA=${DATA:-../shared/data}
OUT=${OUT:-/tmp/head_pair}
PY=${PY:-$PWD/.venv/bin/python}
BONEFRAC=${BONEFRAC:-$PWD/.venv/bin/bonefrac}
mkdir -p "$OUT/runs" "$OUT/logs"
[ -f "$OUT/data/manifest.csv" ] || "$BONEFRAC" data build --fracatlas "$DATA/fracatlas" \
  --yolo "$DATA/bone_fracture_yolo" --out "$OUT/data" --force
old_tree="$OUT/old_tree"
[ -d "$old_tree" ] || git worktree add -f "$old_tree" "$OLD_COMMIT"
for arm in $ARMS; do
  tree=$PWD; [ "$arm" = old ] && tree=$old_tree
  for s in $SEEDS; do
    name="${arm}_${SIZE}_s$s"; run="$OUT/runs/$name"
    if [ ! -f "$run/metrics.json" ] && [ -f "$STORED/$name/metrics.json" ]; then
      mkdir -p "$run" && cp -r "$STORED/$name/." "$run/"  # a finished arm's record
    fi
    [ -f "$run/metrics.json" ] && continue
    log="$OUT/logs/${arm}_${SIZE}_s$s.log"
    if [ -f "$run/checkpoints/last.ckpt" ]; then  # an interrupted arm goes on from its last epoch
      PYTHONPATH="$tree/src" nice -n 5 "$BONEFRAC" train --resume "$run" --no-deploy \
        --no-progress >> "$log" 2>&1
      continue
    fi
    # shellcheck disable=SC2086
    PYTHONPATH="$tree/src" nice -n 5 "$BONEFRAC" train --config "$tree/$CONFIG" \
      --manifest "$OUT/data/manifest.csv" --out "$run" --no-deploy --force --no-progress \
      --set seed="$s" --set data.image_size="$SIZE" $EXTRA > "$log" 2>&1
  done
done
for arm in $ARMS; do  # keep each finished arm's record (no weights) for later pairings
  for s in $SEEDS; do
    name="${arm}_${SIZE}_s$s"; run="$OUT/runs/$name"
    [ -f "$run/metrics.json" ] && [ ! -f "$STORED/$name/metrics.json" ] || continue
    mkdir -p "$STORED/$name/predictions"
    cp "$run"/{metrics.json,model.json,config.yaml,history.csv} "$STORED/$name/" 2>/dev/null || true
    cp "$run"/predictions/{val,test}.csv "$STORED/$name/predictions/"
  done
done
missing=0
for s in $SEEDS; do for arm in old new; do
  [ -f "$OUT/runs/${arm}_${SIZE}_s$s/metrics.json" ] || missing=1
done; done
if [ "$missing" = 1 ]; then  # not every pair is trained: each finished arm alone, with its CIs
  for s in $SEEDS; do for arm in old new; do
    name="${arm}_${SIZE}_s$s"
    [ -f "$OUT/runs/$name/metrics.json" ] || { echo "$name: not trained yet"; continue; }
    "$PY" docs/experiments/localisation/head_compare.py --b "$OUT/runs/$name" --b-name "$arm" \
      --json "$OUT/head_compare_$name.json" | tee "$OUT/head_compare_$name.md"
  done; done
  exit 0
fi
a=(); b=()
for s in $SEEDS; do a+=("$OUT/runs/old_${SIZE}_s$s"); b+=("$OUT/runs/new_${SIZE}_s$s"); done
"$PY" docs/experiments/localisation/head_compare.py --a "${a[@]}" --b "${b[@]}" --a-name "old head" --b-name "FCOS" \
  --json "$OUT/head_compare_$SIZE.json" | tee "$OUT/head_compare_$SIZE.md"
