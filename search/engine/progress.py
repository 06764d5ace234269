"""The one progress shape every long step reports in, and the one stopwatch.

A progress callback is called as ``progress(stage, done, total)``: commands draw
it with tqdm (``StageBars``), the site writes it to a job's or run's row."""
from __future__ import annotations

import time
from typing import Callable

Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return 1000 * (time.perf_counter() - started)


class Throttle:
    """A progress callback passing calls on to ``write`` at most every ``interval`` seconds,
    and always on a new stage or at the end: for writers that cost a database update."""

    def __init__(self, write, interval: float = 0.5):
        self.write, self.interval, self.last, self.stage = write, interval, 0.0, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage or done >= total or now - self.last >= self.interval:
            self.stage, self.last = stage, now
            self.write(stage, done, total)
