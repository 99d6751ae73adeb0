#!/usr/bin/env bash
# The detector head (FCOS) at higher resolution (issue 24): configs/lite0_loc.yaml at SIZE_A px
# (default 512) and at SIZE_B px (default 640), both sources, SEEDS seeds each,
# all side by side on one GPU machine (the `device` tool), paired on the same split and seeds;
# then bench/localize.py on the test split of each arm (hit rate, AP50, ap50_boxed, box size).
# ARM_C="--set KEY=VALUE ...": a third SIZE_A px arm with those settings, paired the same way
# (default none; e.g. ARM_C="--set model.loc_levels=[4,8,16,32]" for a stride-4 finest level).
# Inputs as for bench/device_seeds.sh (.whl/ and a pack), but the pack made at SIZE_B, with only
# Lite0's weights, so that it and the wheels fit the 64 MiB a call carries:
#   bench/pack_images.py MANIFEST --size 640 --format webp --quality 75 --out /tmp/pack640
#   mkdir -p .pack640/weights && (cd /tmp/pack640 && tar -czf - manifest.csv images) \
#     > .pack640/pack.tar.gz && cp .pack/weights/lite0.pth .pack640/weights/
# then: run(command="PACK=.pack640 bash bench/device_loc_res.sh", carry=[".pack640", ".whl"])
# (the SIZE_A arm letterboxes the same files down). Writes $OUT/loc_res.tar.gz (run directories
# without weights), $OUT/localize_<arm>.json and $OUT/log.txt. Budget: TRAIN_S s of training.
# Dry run on a CPU (not beside other trainings: stop_trainings ends them all): WHL=none \
#   OUT=/tmp/dry PACK=/tmp/pack TRAIN_S=600 SEEDS=1 SIZE_B=448 PYTHON=.venv/bin/python \
#   EXTRA="--set train.epochs=1 --set data.limit_per_split=48" bash bench/device_loc_res.sh
set -u
TRAIN_S=${TRAIN_S:-480}
SEEDS=${SEEDS:-3}
SIZE_A=${SIZE_A:-512}
SIZE_B=${SIZE_B:-640}
ARM_C=${ARM_C-}  # a third, SIZE_A px arm ("" for none)
RUNS=${RUNS:-/tmp/loc_res}
. bench/device_env.sh
start=$(date +%s)
jobs=()
stab 0 "loc$SIZE_A" "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest.csv" \
  --set data.image_size="$SIZE_A" & jobs+=($!)
stab 0 "loc$SIZE_B" "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest.csv" \
  --set data.image_size="$SIZE_B" & jobs+=($!)
if [ -n "$ARM_C" ]; then  # a third arm at SIZE_A px with its own settings
  # shellcheck disable=SC2086
  stab 0 "loc${SIZE_A}c" "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest.csv" \
    --set data.image_size="$SIZE_A" $ARM_C & jobs+=($!)
fi
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null; uptime
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee above
stop_trainings
echo "trained after $(( $(date +%s) - start )) s"
for arm in "loc$SIZE_A" "loc$SIZE_B" "loc${SIZE_A}c"; do
  runs=$(ls -d "$RUNS/$arm"/seed*/ 2>/dev/null | while read -r d; do
    [ -f "$d/model.json" ] && echo "$d"; done)
  [ -n "$runs" ] || continue
  # shellcheck disable=SC2086
  $PYTHON bench/localize.py --loc $runs --json "$OUT/localize_$arm.json" || true
done
pack_runs loc_res.tar.gz
ls -la "$OUT"
