#!/usr/bin/env bash
# Multi-seed trainings side by side on one GPU machine (the `device` tool), in one call:
#   lite0   configs/lite0_cls.yaml, FracAtlas only, SEEDS_A seeds   (issue 14: collapses, seed sd)
#   lite1/2 configs/lite1.yaml / lite2.yaml, FracAtlas only     (issue 14: Lite0/1/2 at native size)
#   loc/cls configs/lite0_loc.yaml with and without model.localize, both sources (issue 15, paired)
# Expects in the repo root (ignored by git, named in the call's `carry`):
#   .pack/          bench/pack_images.py --size 384 output (manifest.csv + images/), or the two
#                   as .pack/pack.tar.gz (one file travels in less room than 8000)
#   .pack/weights/  lite0.pth lite1.pth lite2.pth (copies of the packaged ImageNet .pth files)
#   .whl/           wheels of the Python packages the machine lacks
# Writes to $OUT: runs.tar.gz (every run directory without weights or checkpoints), one
# localising run's weights (loc_seed1.tar.gz) and log.txt. Budget: TRAIN_S seconds of training.
# Dry run on a CPU: WHL=none OUT=/tmp/dry TRAIN_S=600 SEEDS_A=2 SEEDS_B=1 EXTRA="--set train.epochs=1" \
#   PYTHON=.venv/bin/python bash bench/device_seeds.sh
set -u
TRAIN_S=${TRAIN_S:-470}
SEEDS_A=${SEEDS_A:-10}
SEEDS_B=${SEEDS_B:-3}
SEEDS_C=${SEEDS_C:-3}
RUNS=${RUNS:-/tmp/device_runs}
. bench/device_env.sh
start=$(date +%s)
jobs=()
stab 0 loc "$SEEDS_B" configs/lite0_loc.yaml "$PACK/manifest.csv" & jobs+=($!)
stab 0 cls384 "$SEEDS_B" configs/lite0_loc.yaml "$PACK/manifest.csv" --set model.localize=false &
jobs+=($!)
stab 5 lite0 "$SEEDS_A" configs/lite0_cls.yaml "$PACK/manifest_fa.csv" & jobs+=($!)
stab 10 lite1 "$SEEDS_C" configs/lite1.yaml "$PACK/manifest_fa.csv" & jobs+=($!)
stab 10 lite2 "$SEEDS_C" configs/lite2.yaml "$PACK/manifest_fa.csv" & jobs+=($!)
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null; uptime
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee above
stop_trainings
echo "all done after $(( $(date +%s) - start )) s"
pack_runs runs.tar.gz
[ -f "$RUNS/loc/seed1/model.safetensors" ] && tar -C "$RUNS/loc" -czf "$OUT/loc_seed1.tar.gz" \
  --exclude='checkpoints' seed1
ls -la "$OUT"
