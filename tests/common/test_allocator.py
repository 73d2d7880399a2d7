"""glibc keeps freed memory once asked: a CPU forward stops page-faulting its activations back in."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Minor page faults per forward of EfficientNet-Lite0 (batch 2, 160 px) after four warm-up forwards, in a fresh
# process with or without keep_freed_memory (process-wide and one-way: never in the test process itself).
PROBE = """
import resource, sys, torch
from common.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
from pipeline.backbones import build_backbone
torch.set_num_threads(1)
backbone = build_backbone(name="efficientnet-lite0", weights="random").eval()
x = torch.zeros(2, 3, 160, 160, dtype=torch.uint8)
with torch.inference_mode():
    for _ in range(4):
        backbone(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        backbone(x)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def _faults_per_forward(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_kept_memory_leaves_a_forward_without_page_faults():
    applied, kept = _faults_per_forward("keep")
    _, plain = _faults_per_forward("plain")
    assert applied == "True"
    # Relative, not absolute: the count depends on the CPU's kernels (this VM: 0 kept vs 3000-5000 plain; the CI
    # machine once counted 400 vs 2429 after two warm-ups, so an absolute bound of 200 failed there).
    assert kept < plain / 3, f"{kept:.0f} minor faults per forward with the memory kept ({plain:.0f} without)"

