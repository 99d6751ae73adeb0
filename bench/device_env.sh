# Sourced by the bench/device_*.sh scripts (after they set RUNS and TRAIN_S): the output, the
# Python environment and the image pack on a lent GPU machine. Reads OUT (required), PYTHON,
# PACK, WHL, EXTRA (see bench/device_seeds.sh); leaves $OUT/log.txt (all output), PYTHONPATH,
# the BONEFRAC_LITE<N>_WEIGHTS copies and, beside PACK/manifest.csv, manifest_fa.csv
# (FracAtlas rows) and manifest_rf.csv (Roboflow rows), all with the pack's splits.
OUT=${OUT:?set OUT}
PYTHON=${PYTHON:-python3}
PACK=${PACK:-.pack}
WHL=${WHL:-.whl}
EXTRA=${EXTRA:-}
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
  [ -f "$PACK/weights/lite$v.pth" ] && export BONEFRAC_LITE${v}_WEIGHTS=$(cd "$PACK/weights" && pwd)/lite$v.pth
done
if [ -f "$PACK/pack.tar.gz" ] && [ ! -f "$PACK/manifest.csv" ]; then
  tar -xzf "$PACK/pack.tar.gz" -C "$PACK" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PYTHON -c "import torch, timm, lightning, bonefrac.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'lightning', lightning.__version__)" || exit 1
# per-source manifests beside the pack's, so its relative image paths hold
$PYTHON - "$PACK" <<'PY' || exit 1
import sys
import pandas as pd
df = pd.read_csv(f"{sys.argv[1]}/manifest.csv")
df[df["source"] == "fracatlas"].to_csv(f"{sys.argv[1]}/manifest_fa.csv", index=False)
df[df["source"] == "yolo"].to_csv(f"{sys.argv[1]}/manifest_rf.csv", index=False)
PY
# stab NICE NAME SEEDS CONFIG MANIFEST [--set ...]: bench/stability.py, seeds side by side
stab() {
  local nice=$1 name=$2 seeds=$3 config=$4 manifest=$5
  shift 5
  timeout "$TRAIN_S" nice -n "$nice" $PYTHON bench/stability.py --config "$config" \
    --manifest "$manifest" --seeds "$seeds" --parallel "$seeds" --out "$RUNS/$name" \
    --set data.num_workers=1 "$@" $EXTRA > "$RUNS/$name.summary.txt" 2>&1
  echo "== $name (exit $?)"; cat "$RUNS/$name.summary.txt"
}
# pack_runs FILE: every run directory under RUNS, without weights or checkpoints, as OUT/FILE
pack_runs() {
  tar -C "$RUNS" -czf "$OUT/$1" --exclude='*.safetensors' --exclude='checkpoints' \
    --exclude='*.ckpt' .
}
# trainings a timeout cut off (stability.py's children outlive it)
stop_trainings() { pkill -f 'bonefrac.cli import app; app\(\) train' 2>/dev/null; }
