#!/usr/bin/env bash
# embed-catalog on a lent GPU machine: ~4000 JPEGs, the job's img/s against the bare network forward, then
# device decoding (--decode gpu, --compile) against the decode alone and the network, both backbones.
#
# Run from the repository root on the GPU machine (16 cores, one H100). Its python3 has torch,
# pyarrow, pillow, click and tqdm but not the EfficientNet-Lite package: carry it, e.g. with the
# device tool: run(command="bash bench/gpu_embed.sh",
#                  carry=[".venv/lib/python3.11/site-packages/efficientnet_lite_pytorch"])
# Without it the script falls back to ResNet-50 (random weights; speed does not depend on them).
# Env: N (images, 4000), WORKERS (14), BATCH (256), BACKBONE (auto|efficientnet-lite0|resnet50), PY.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
N=${N:-4000}
WORKERS=${WORKERS:-14}
BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu N=40 WORKERS=1 BATCH=8 smoke-tests this script without a GPU
WORK=$(mktemp -d /tmp/gpu_embed.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Carried pure-python packages only (never a whole venv: its torch would shadow the GPU build).
mkdir -p "$WORK/site"
for pkg in .venv/lib/python3*/site-packages/efficientnet_lite_pytorch; do
  [ -d "$pkg" ] && ln -s "$PWD/$pkg" "$WORK/site/"
done
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

BACKBONE=${BACKBONE:-auto}
if [ "$BACKBONE" = auto ]; then
  if $PY -c "import efficientnet_lite_pytorch" 2>/dev/null; then BACKBONE=efficientnet-lite0; else BACKBONE=resnet50; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, PIL, pyarrow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pillow', PIL.__version__, 'pyarrow', pyarrow.__version__, 'cores', len(__import__('os').sched_getaffinity(0)))"

echo "== making $N JPEGs (256 px) in $WORK/cat"
$PY - "$WORK/cat" "$N" "$BACKBONE" <<'PYEOF'
import sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, torch
from PIL import Image

root, n, backbone = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def make(i):
    rng = np.random.default_rng(i)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((256, 256), Image.BICUBIC), dtype=np.int16)
    img = np.clip(field + rng.normal(0, 6, (256, 256, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(root / "img" / f"{i}.jpg", quality=90)

(root / "img").mkdir(parents=True)
t = time.perf_counter()
with ProcessPoolExecutor() as pool:
    list(pool.map(make, range(n), chunksize=64))
pq.write_table(pa.table({"product_id": [f"p{i}" for i in range(n)], "image_path": [f"img/{i}.jpg" for i in range(n)],
                         "category": ["shoes"] * n}), root / "catalog.parquet")
from pipeline.checkpoint import save_checkpoint
from pipeline.embedder import build_embedder
torch.manual_seed(0)
save_checkpoint(root / "checkpoint.pt", build_embedder(categories=["shoes"], backbone=backbone,
                backbone_weights="random"), config={})
print(f"made {n} JPEGs in {time.perf_counter() - t:.1f} s; checkpoint {backbone} (random weights)")
PYEOF

echo "== ctl embed-catalog --device $DEVICE --batch-size $BATCH --workers $WORKERS (progress bar, summary line)"
$PY -m jobs.catalog.embed_catalog --manifest "$WORK/cat/catalog.parquet" --checkpoint "$WORK/cat/checkpoint.pt" \
  --out "$WORK/out" --device "$DEVICE" --batch-size "$BATCH" --workers "$WORKERS" --shard-size 1000
$PY - "$WORK/out" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/_manifest.json"))
print("manifest:", {k: m[k] for k in ("complete", "embedded", "rejected", "n_shards", "dim", "backbone")})
PYEOF
echo "== rerun over the complete output (no-op)"
$PY -m jobs.catalog.embed_catalog --manifest "$WORK/cat/catalog.parquet" --checkpoint "$WORK/cat/checkpoint.pt" \
  --out "$WORK/out" --device "$DEVICE" --shard-size 1000 --quiet

echo "== job vs bare forward on the GPU, same images, same run"
$PY bench/bench_embed.py --device "$DEVICE" --manifest "$WORK/cat/catalog.parquet" --backbone "$BACKBONE" \
  --batch-size "$BATCH" --workers "$WORKERS" --repeats 2

echo "== device decoding: job (--decode cpu / gpu / gpu --compile) vs decode alone vs bare network, both backbones"
$PY bench/bench_device_decode.py --device "$DEVICE" --n "$N" --batch-size "$BATCH" --workers "$WORKERS" --compile
