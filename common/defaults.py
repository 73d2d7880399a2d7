"""The one home of every default shared by more than one module: locations, model, retrieval, index, jobs.

A job's own settings live in its config dataclass; a value that two modules need comes from here.
"""
from pathlib import Path

# -- where the embedded sample and its artefacts live ------------------------------------------------
DATA_DIR = Path("data")
SAMPLE_DIR = DATA_DIR / "sample"
CATALOG = SAMPLE_DIR / "catalog.parquet"
RUN_DIR = DATA_DIR / "runs" / "sample"
CHECKPOINT = RUN_DIR / "checkpoint.pt"
EMBEDDINGS_DIR = DATA_DIR / "embeddings" / "sample"
INDEX_DIR = DATA_DIR / "index" / "sample"
DEMO_DIR = DATA_DIR / "demo"

SEED = 0

# -- the model (chosen on the sample's validation split; README "How the defaults were chosen") -------
BACKBONE = "efficientnet-lite0"   # the plain network: what a backbone is built as when nothing names one
# What `ctl train` trains on: the same network with two earlier stages beside its last map (pipeline.backbones);
# over 3 training seeds it won on validation (hybrid HR@10 0.341 against 0.311) and on test (docs/quality.md).
TRAIN_BACKBONE = "efficientnet-lite0-ms"
BACKBONE_WEIGHTS = "imagenet"
DIM = 128
HIDDEN = 0            # linear global/product heads: an MLP memorises the sample's few hundred pairs
DROPOUT = 0.5
MARGIN = 0.2
EXCLUSION = "mask"    # how a training/evaluation scene leaves its product out: mask | crop
EXCLUSION_MARGIN = 0.04

# -- retrieval ---------------------------------------------------------------------------------------
K = 20
LOOK_K = 4            # products per category in a whole look
DEMO_K = 10           # products in the demos' flat retrieval (`ctl demo`, `ctl update-demo`)
CANDIDATES = 200      # stage-1 candidates when stage 1 is approximate or by the global distance
# When stage 1 ranks by the hybrid itself over an exact search, its top k already are the re-rank's: C = k plus
# this margin (at least k) for the float32 search against the float16 re-rank (at 21,198 products over 3 seeds,
# a margin of 2 already gave the lists of C = 800: retrieval.candidate_count, docs/benchmarks-serve.md).
CANDIDATES_EXACT_MARGIN = 10
# What stage 1 searches the index by: hybrid (each category's hybrid query, pipeline.distances.hybrid_queries: the
# candidates are the hybrid's own nearest, so two-stage equals exhaustive on an exact index) | global (the scene's
# global embedding, as the paper's pipeline; docs/quality.md, seventh round)
STAGE1 = "hybrid"
STAGE1_MODES = ("hybrid", "global")
PRESENCE_THRESHOLD = 0.5   # a category with presence probability >= this is judged already in the scene

# -- the index ---------------------------------------------------------------------------------------
MEMORY_BUDGET = "4GB"
TARGET_RECALL = 0.98
RECALL_K = 20
RECALL_QUERY_NOISE = 0.5   # recall queries: database rows plus noise of about this norm, renormalised
INDEX_INTENT = "balanced"

# -- catalogue embedding -----------------------------------------------------------------------------
SHARD_SIZE = 10_000
# Small batches are faster per image on a CPU (EfficientNet's depthwise convolutions stay in cache): on 2 cores
# `ctl embed-catalog` of the sample's 2,500 products 145-149 s at 32 -> 99-102 s at 4 (the embeddings equal bit
# for bit), the training feature cache 19-23 -> 34-39 img/s at 4 (8: 33, 16: 30-32; 1 slower and other bits).
BATCH_SIZE_CPU = 4
BATCH_SIZE_GPU = 256

# -- incremental index updates: when `ctl update-index` says a full rebuild is due -------------------
REBUILD_CHURN = 0.2            # rows added, changed or removed since the last full build, over its size
REBUILD_IMBALANCE_RATIO = 1.5  # inverted-list imbalance grown by this factor since the build
REBUILD_SCORE_DROP = 0.05      # new rows this much further (mean inner product) from their centroids

# -- the service (`ctl serve`; the measurements behind them: docs/benchmarks-serve.md) -----------------
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8080
SERVE_MAX_UPLOAD_BYTES = 16 * 2**20   # a scene upload larger than this is refused (413)
SERVE_QUEUE_SIZE = 64                 # requests waiting for a model worker; one more is refused (503)
SERVE_MAX_K = 100                     # k above this is refused (422): each hit costs metadata and JSON
SERVE_MAX_CANDIDATES = 10_000         # stage-1 candidates above this are refused (422)
SERVE_WATCH_SECONDS = 2.0             # how often the index directory's pointer is read
# The model executor per device (docs/benchmarks-serve.md). CPU: the forward on every usable core
# (ServeSettings.for_device), batches of what is waiting up to 4, exact shapes (batches up to 2 measured against it
# on 2026-12-07, eighth session: lower CPU a request at 16 and 64 in 14 of 26 interleaved rounds, a coin toss, so
# the default stays). GPU (still to be measured): batches up to 64 padded to powers of two (each shape warmed before
# ready), stages on their own thread beside the next forward.
SERVE_CPU = {"max_batch": 4, "pad_batches": False, "pipeline": False}
SERVE_GPU = {"threads": 1, "max_batch": 64, "pad_batches": True, "pipeline": True}
