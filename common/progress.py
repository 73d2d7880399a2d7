"""Progress bars that suit where they go: a live bar on a terminal, one plain line per tenth of the work in a log."""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_STEP = 0.10              # in a log, a line each time another 10% of the total is done
LOG_INTERVAL_S = 60.0        # ... or, when the total is unknown, at most a line a minute
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class _LineWriter:
    """A stream for tqdm that turns its carriage-return redraws into whole lines, each written once.

    tqdm redraws a bar by writing "\\r" and the new status; in a file that is one ever-longer line of
    overwritten bars (a `make demo` log grew by megabytes). Here each status becomes one line.
    """

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        done = line.split(" [", 1)[0]      # "desc: pct n/total": the closing redraw of a line already written
        if line and done != self.last:
            self.stream.write(line + "\n")
            self.last = done

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:       # a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", disable: bool | None = False, file: IO[str] | None = None, **options: Any) -> tqdm:
    """A tqdm bar for `iterable` (or updated by hand) that draws live on a terminal and, when `file` (stderr
    by default) is not one, writes one line per LOG_STEP of `total` (or per LOG_INTERVAL_S without a total).
    `disable` None (tqdm's convention): a bar on a terminal only, nothing in a log."""
    stream = file if file is not None else sys.stderr
    if disable is None:
        disable = not _is_terminal(stream)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream, dynamic_ncols=True,
                    **options)
    options.pop("smoothing", None)
    if total:
        # miniters: refresh only every LOG_STEP of the work; mininterval 0 and maxinterval inf so that time never
        # triggers (or rescales) a refresh in between
        pace = {"miniters": max(1, math.ceil(total * LOG_STEP)), "mininterval": 0.0, "maxinterval": math.inf}
    else:
        pace = {"mininterval": LOG_INTERVAL_S, "maxinterval": math.inf}
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=_LineWriter(stream),
                bar_format=LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL, **pace, **options)
