#!/usr/bin/env bash
# Issue 37's "then ship it" on a lent GPU machine (the `device` tool), in one call: SEEDS
# trainings (seeds 1..SEEDS) of the shipped recipe (configs/lite0_loc.yaml: 384 px, FracAtlas +
# bone_fracture_yolo; roboflow_sr2022 stays out) with the kept levers (LEVERS: --set overrides,
# default the acquisition randomisation) side by side on the image pack, then
# bench/ship_model.py --ensemble builds their ensemble (mean logit and map, every deploy fit on
# its own val scores; the appearance rule as its out-of-scope detector) and ships it as NAME,
# fp16, at most 12 MB per member, with every seed's test figures in its card.
# Inputs as bench/device_shipped_model.sh (.pack/ from bench/pack_images.py --size 384 of the
# both-sources manifest, .pack/weights/lite0.pth, .whl/).
#   device run: OUT=$OUT SEEDS=3 NAME=lite0-loc-ens-1 bash bench/device_ensemble.sh
#               (carry [".pack", ".whl"], timeout_s 590)
#   then here:  tar -xzf FILES_AT/shipped.tar.gz -C src/bonefrac/shipped
#               python bench/unseen_site.py shipped --model lite0-loc-ens-1 --work WORK
#               (the unseen site's figures for BENCHMARKS and the card)
# Dry run on a CPU (a small pack): WHL=none OUT=/tmp/dry TRAIN_S=900 SEEDS=2 \
#   EXTRA="--set train.epochs=1" PYTHON=.venv/bin/python bash bench/device_ensemble.sh
set -u
TRAIN_S=${TRAIN_S:-420}
SHIP_S=${SHIP_S:-150}
SEEDS=${SEEDS:-3}
NAME=${NAME:-lite0-loc-ens-1}
LEVERS=${LEVERS:---set data.randomise=[acquisition]}
RUNS=${RUNS:-/tmp/device_runs}
. bench/device_env.sh
start=$(date +%s)
set -f  # LEVERS and EXTRA are lists of --set arguments, split but never globbed ([...])
# shellcheck disable=SC2086
timeout "$TRAIN_S" $PYTHON bench/stability.py --config configs/lite0_loc.yaml \
  --manifest "$PACK/manifest.csv" --seeds "$SEEDS" --parallel "$SEEDS" --out "$RUNS/loc" \
  --set data.num_workers=4 $LEVERS $EXTRA
echo "== trainings (exit $?) after $(( $(date +%s) - start )) s"
set +f
stop_trainings
runs=()
for s in $(seq 1 "$SEEDS"); do
  [ -f "$RUNS/loc/seed$s/metrics.json" ] && runs+=("$RUNS/loc/seed$s")
done
if [ "${#runs[@]}" -lt 2 ]; then
  echo "fewer than 2 seeds finished: no ensemble to ship"; pack_runs runs.tar.gz; exit 1
fi
mkdir -p "$OUT/shipped"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
timeout "$SHIP_S" $PYTHON bench/ship_model.py --runs "${runs[@]}" --name "$NAME" \
  --ensemble "$RUNS/ensemble" --ood none --root "$OUT/shipped" --force \
  --hardware "${gpu:-no GPU}, $(nproc --all) CPUs" \
  --command "device: OUT=\$OUT SEEDS=$SEEDS NAME=$NAME bash bench/device_ensemble.sh"
echo "== ensemble + packaging (exit $?) after $(( $(date +%s) - start )) s"
[ -f "$OUT/shipped/$NAME/model.json" ] && tar -C "$OUT/shipped" -czf "$OUT/shipped.tar.gz" . \
  && rm -rf "$OUT/shipped"
pack_runs runs.tar.gz
ls -la "$OUT"
