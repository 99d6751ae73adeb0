#!/usr/bin/env bash
# Localising vs classification-only Lite0 (configs/lite0_loc.yaml, 384 px) trained on FracAtlas
# alone, SEEDS seeds each side by side on one GPU machine (the `device` tool), then each run
# scored on the Roboflow test split (`bonefrac evaluate --manifest`, predictions/roboflow.csv):
# issue 15's "does cross-source ROC-AUC move", and the hit rate after EPOCHS epochs.
# Same inputs as bench/device_seeds.sh (.pack/, .whl/). Writes $OUT/fa_transfer.tar.gz (run
# directories without weights; fa_trained.tar.gz: the same before scoring) and $OUT/log.txt.
# Dry run on a CPU: WHL=none OUT=/tmp/dry PACK=/tmp/pack TRAIN_S=600 SEEDS=1 EPOCHS=2 \
#   EXTRA="--set data.image_size=64" PYTHON=.venv/bin/python bash bench/device_fa_transfer.sh
set -u
TRAIN_S=${TRAIN_S:-175}
SEEDS=${SEEDS:-3}
EPOCHS=${EPOCHS:-10}
RUNS=${RUNS:-/tmp/fa_transfer}
. bench/device_env.sh
start=$(date +%s)
jobs=()
stab 0 loc_fa "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest_fa.csv" \
  --set train.epochs="$EPOCHS" & jobs+=($!)
stab 0 cls_fa "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest_fa.csv" \
  --set train.epochs="$EPOCHS" --set model.localize=false & jobs+=($!)
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee above
stop_trainings
echo "trained after $(( $(date +%s) - start )) s"
pack_runs fa_trained.tar.gz  # in case the scoring below runs out of time
evals=()
for run in "$RUNS"/*/seed*/; do
  [ -f "$run/model.json" ] || continue
  $PYTHON -c "from bonefrac.cli import app; app()" evaluate "$run" \
    --manifest "$PACK/manifest_rf.csv" --name roboflow --n-boot 200 > "$run/roboflow.log" 2>&1 &
  evals+=($!)
done
[ ${#evals[@]} -gt 0 ] && wait "${evals[@]}"
echo "scored after $(( $(date +%s) - start )) s"
pack_runs fa_transfer.tar.gz
ls -la "$OUT"
