"""Default locations of the embedded sample's data and artifacts, shared by every command."""
from pathlib import Path

DATA_DIR = Path("data")
SAMPLE_DIR = DATA_DIR / "sample"
RUN_DIR = DATA_DIR / "runs" / "sample"
CHECKPOINT = RUN_DIR / "checkpoint.pt"
EMBEDDINGS_DIR = DATA_DIR / "embeddings" / "sample"
INDEX_DIR = DATA_DIR / "index" / "sample"
