"""Files for and from the data tests: tiny images, and the temp files an atomic write must not leave."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def image(path: Path, size=(8, 8), colour=(90, 20, 30)) -> Path:
    """Write a small RGB image at `path` (format from the suffix), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def leftovers(root: Path) -> list[Path]:
    """Temp or partial files: atomic writes use hidden `.name.*.tmp` names."""
    return [p for p in root.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix == ".tmp")]
