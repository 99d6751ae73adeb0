#!/usr/bin/env bash
# Does a larger input make the map land on the break and the boxes reach IoU 0.5 (issue 15)?
# configs/lite0_loc.yaml at 384 px and at SIZE_B px (default 512), both sources, SEEDS seeds each,
# all side by side on one GPU machine (the `device` tool), paired on the same split and seeds;
# then bench/localize.py on the test split of each arm (hit rate, AP50, ap50_boxed, box size).
# ARM_C="--set KEY=VALUE ...": a third 384 px arm with those settings, paired the same way
# (default: Gaussian map targets, train.loc_target=gaussian; ARM_C= for none).
# Inputs as for bench/device_seeds.sh (.whl/ and a pack), but the pack made at SIZE_B, with only
# Lite0's weights, so that it and the wheels fit the 64 MiB a call carries (39 + 7 + 3 MB):
#   bench/pack_images.py MANIFEST --size 512 --format webp --quality 80 --out /tmp/pack512
#   mkdir -p .pack512/weights && (cd /tmp/pack512 && tar -czf - manifest.csv images) \
#     > .pack512/pack.tar.gz && cp .pack/weights/lite0.pth .pack512/weights/
# then: run(command="PACK=.pack512 bash bench/device_loc_res.sh", carry=[".pack512", ".whl"])
# (the 384 px arm letterboxes the same files down). Writes $OUT/loc_res.tar.gz (run directories
# without weights), $OUT/localize_<arm>.json and $OUT/log.txt. Budget: TRAIN_S s of training.
# Dry run on a CPU (not beside other trainings: stop_trainings ends them all): WHL=none \
#   OUT=/tmp/dry PACK=/tmp/pack TRAIN_S=600 SEEDS=1 SIZE_B=448 PYTHON=.venv/bin/python \
#   EXTRA="--set train.epochs=1 --set data.limit_per_split=48" bash bench/device_loc_res.sh
set -u
TRAIN_S=${TRAIN_S:-480}
SEEDS=${SEEDS:-3}
SIZE_B=${SIZE_B:-512}
ARM_C=${ARM_C---set train.loc_target=gaussian}  # a third, 384 px arm ("" for none)
RUNS=${RUNS:-/tmp/loc_res}
. bench/device_env.sh
start=$(date +%s)
jobs=()
stab 0 loc384 "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest.csv" & jobs+=($!)
stab 0 "loc$SIZE_B" "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest.csv" \
  --set data.image_size="$SIZE_B" & jobs+=($!)
if [ -n "$ARM_C" ]; then  # a third arm at 384 px with its own settings, e.g. a target kind
  # shellcheck disable=SC2086
  stab 0 loc384c "$SEEDS" configs/lite0_loc.yaml "$PACK/manifest.csv" $ARM_C & jobs+=($!)
fi
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null; uptime
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee above
stop_trainings
echo "trained after $(( $(date +%s) - start )) s"
for arm in loc384 "loc$SIZE_B" loc384c; do
  runs=$(ls -d "$RUNS/$arm"/seed*/ 2>/dev/null | while read -r d; do
    [ -f "$d/model.json" ] && echo "$d"; done)
  [ -n "$runs" ] || continue
  # shellcheck disable=SC2086
  $PYTHON bench/localize.py --loc $runs --json "$OUT/localize_$arm.json" || true
done
pack_runs loc_res.tar.gz
ls -la "$OUT"
