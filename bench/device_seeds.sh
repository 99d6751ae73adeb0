#!/usr/bin/env bash
# Multi-seed trainings side by side on one GPU machine (the `device` tool), in one call:
#   lite0   configs/lite0.yaml, FracAtlas only, SEEDS_A seeds   (issue 14: collapses, seed sd)
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
OUT=${OUT:?set OUT}
PYTHON=${PYTHON:-python3}
TRAIN_S=${TRAIN_S:-470}
SEEDS_A=${SEEDS_A:-10}
SEEDS_B=${SEEDS_B:-3}
SEEDS_C=${SEEDS_C:-3}
EXTRA=${EXTRA:-}
RUNS=${RUNS:-/tmp/device_runs}
PACK=${PACK:-.pack}
WHL=${WHL:-.whl}
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/log.txt") 2>&1
if ls "$WHL"/*.whl >/dev/null 2>&1; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHL"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
for v in 0 1 2; do
  [ -f .pack/weights/lite$v.pth ] && export BONEFRAC_LITE${v}_WEIGHTS=$PWD/.pack/weights/lite$v.pth
done
if [ -f "$PACK/pack.tar.gz" ] && [ ! -f "$PACK/manifest.csv" ]; then
  tar -xzf "$PACK/pack.tar.gz" -C "$PACK" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PYTHON -c "import torch, timm, lightning, bonefrac.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'lightning', lightning.__version__)" || exit 1
# the FracAtlas rows of the same manifest (same splits), beside it so relative paths hold
$PYTHON - "$PACK" <<'PY' || exit 1
import sys
import pandas as pd
df = pd.read_csv(f"{sys.argv[1]}/manifest.csv")
df[df["source"] == "fracatlas"].to_csv(f"{sys.argv[1]}/manifest_fa.csv", index=False)
PY
stab() {  # nice-level name seeds config manifest [--set ...]
  local nice=$1 name=$2 seeds=$3 config=$4 manifest=$5
  shift 5
  timeout "$TRAIN_S" nice -n "$nice" $PYTHON bench/stability.py --config "$config" \
    --manifest "$manifest" --seeds "$seeds" --parallel "$seeds" --out "$RUNS/$name" \
    --set data.num_workers=1 "$@" $EXTRA > "$RUNS/$name.summary.txt" 2>&1
  echo "== $name (exit $?)"; cat "$RUNS/$name.summary.txt"
}
start=$(date +%s)
jobs=()
stab 0 loc "$SEEDS_B" configs/lite0_loc.yaml "$PACK/manifest.csv" & jobs+=($!)
stab 0 cls384 "$SEEDS_B" configs/lite0_loc.yaml "$PACK/manifest.csv" --set model.localize=false &
jobs+=($!)
stab 5 lite0 "$SEEDS_A" configs/lite0.yaml "$PACK/manifest_fa.csv" & jobs+=($!)
stab 10 lite1 "$SEEDS_C" configs/lite1.yaml "$PACK/manifest_fa.csv" & jobs+=($!)
stab 10 lite2 "$SEEDS_C" configs/lite2.yaml "$PACK/manifest_fa.csv" & jobs+=($!)
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null; uptime
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee above
pkill -f "bonefrac.cli import app" 2>/dev/null  # trainings cut off by the timeout
echo "all done after $(( $(date +%s) - start )) s"
tar -C "$RUNS" -czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='checkpoints' \
  --exclude='*.ckpt' .
[ -f "$RUNS/loc/seed1/model.safetensors" ] && tar -C "$RUNS/loc" -czf "$OUT/loc_seed1.tar.gz" \
  --exclude='checkpoints' seed1
ls -la "$OUT"
