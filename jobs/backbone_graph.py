"""Whether a batch job runs the backbone eagerly or as a traced graph: a pure choice, with its reason."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import InputError

# Tracing and freezing (1 to 3 s on 2 cores) and the profiling executor's first two forwards cost about 4 s
# on 2 cores; the graph then saves ~10 ms of a 2-core job's 27 to 34 ms per image (bench_embed --graph-compare,
# EfficientNet-Lite0-ms: 29.7 -> 45.4 img/s end to end at best, docs/benchmarks-embed.md). Below a few hundred
# images tracing costs more than it saves.
TRACE_MIN_IMAGES = 512


@dataclass(frozen=True)
class GraphChoice:
    """How a job runs the backbone: `traced` (pipeline.backbones.traced_backbone) or eager, and why."""

    traced: bool
    reason: str

    @property
    def name(self) -> str:
        return "traced" if self.traced else "eager"


def choose_graph(device_type: str, images: int, *, compile: bool = False, asked: bool | None = None) -> GraphChoice:
    """The backbone's graph for a job embedding `images` images on `device_type` ("cpu", "cuda", ...).

    `asked`: the user's --trace (True) or --no-trace (False); None chooses. `compile`: the job compiles the
    backbone with torch.compile instead. InputError for a combination that cannot run.
    """
    if asked and compile:
        raise InputError("--trace and --compile are two ways to build the backbone's graph: choose one")
    if asked and device_type != "cpu":
        raise InputError(f"--trace runs on a CPU; on {device_type} the backbone runs under bf16 autocast "
                         "(use --compile for a compiled graph there)")
    if asked is not None:
        return GraphChoice(bool(asked), "asked for (--trace)" if asked else "asked for (--no-trace)")
    if compile:
        return GraphChoice(False, "the backbone is compiled (--compile)")
    if device_type != "cpu":
        return GraphChoice(False, f"on {device_type} the backbone runs eagerly under bf16 autocast")
    if images < TRACE_MIN_IMAGES:
        return GraphChoice(False, f"{images} images: tracing (~4 s on 2 cores) would cost more than it saves "
                                  f"below {TRACE_MIN_IMAGES}")
    return GraphChoice(True, f"{images} images on a CPU: the frozen graph, 1.1-1.5x the eager job's rate measured")
