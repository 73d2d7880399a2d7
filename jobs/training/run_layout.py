"""The training run folder's contract: its file names and the typed split and summary every stage reads."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ArtifactError
from common.files import write_json_atomic
from jobs.data.splits import SceneSplit, load_or_make_split
from pipeline.calibration import FILE as CALIBRATION_FILE
from pipeline.checkpoint import CONFIG_FILE

CHECKPOINT_FILE = "checkpoint.pt"
SPLIT_FILE = "split.json"
SUMMARY_FILE = "train_summary.json"
STATE_FILE = "training_state.pt"   # jobs/training/resume.py writes and reads it


@dataclass(frozen=True)
class TrainSummary:
    """What `ctl train` reports and saves as train_summary.json once the run is finished.

    Read tolerantly: a field this version does not know is ignored, a missing one takes its default,
    so a summary written by an older or newer version still loads.
    """

    checkpoint: str
    checkpoint_sha256: str | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)    # per epoch: loss and validation figures
    hybrid: dict = field(default_factory=dict)            # the hybrid's fitted local weights (absent before them)
    presence: dict = field(default_factory=dict)          # the presence head's figures (absent before it)
    classifier_val: dict = field(default_factory=dict)    # the calibrated classifier on validation
    n_train_pairs: int = 0
    n_val_queries: int = 0
    triplets_per_second: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> TrainSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(saved, dict) or "checkpoint" not in saved:
            raise ArtifactError("not a training summary (no checkpoint in it)")
        return cls(**{k: v for k, v in saved.items() if k in known})


@dataclass(frozen=True)
class RunLayout:
    """A training run folder: checkpoint.pt (+ config.json, calibration.json beside it), split.json,
    training_state.pt (for --resume) and train_summary.json (written last: the run finished)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunLayout:
        """The run folder that holds `checkpoint`."""
        return cls(Path(checkpoint).parent)

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION_FILE

    @property
    def split(self) -> Path:
        return self.root / SPLIT_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    def read_split(self) -> SceneSplit:
        """The run's scene split; ArtifactError when it is missing or unreadable."""
        return SceneSplit.read(self.split)

    def split_for(self, scene_ids, *, seed: int) -> SceneSplit:
        """The saved split when it covers exactly these scenes with this seed, else a new one (saved)."""
        return load_or_make_split(self.split, scene_ids, seed=seed)

    def read_config(self) -> dict:
        """The run's saved config (the checkpoint's, as JSON); ArtifactError when missing or unreadable."""
        return _read_json_object(self.config)

    def read_summary(self) -> TrainSummary:
        """The finished run's summary; ArtifactError when missing (not finished) or unreadable."""
        saved = _read_json_object(self.summary)
        try:
            return TrainSummary.from_json(saved)
        except ArtifactError as exc:
            raise ArtifactError(f"{self.summary}: {exc}") from None

    def write_summary(self, summary: TrainSummary) -> None:
        write_json_atomic(self.summary, summary.to_json())


def _read_json_object(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(saved, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return saved
