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
BACKBONE = "efficientnet-lite0"
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
CANDIDATES = 200
PRESENCE_THRESHOLD = 0.5   # a category with presence probability >= this is judged already in the scene

# -- the index ---------------------------------------------------------------------------------------
MEMORY_BUDGET = "4GB"
TARGET_RECALL = 0.98
RECALL_K = 20
INDEX_INTENT = "balanced"

# -- catalogue embedding -----------------------------------------------------------------------------
SHARD_SIZE = 10_000
BATCH_SIZE_CPU = 32
BATCH_SIZE_GPU = 256
