"""Progress and timing: the one progress bar, the switch that turns progress on or off, and per-stage wall and
process-CPU seconds for experiments (CPU time is robust to other load on the machine).

A bar appears only once its step has run for `PROGRESS_DELAY` seconds, so quick steps stay silent. Progress is
on by default (the CLI, notebooks) and off where the environment sets `INTERP_PROGRESS=0` (the test suite);
`showing_progress(flag)` sets it for everything an experiment runs, and `progress_on()` reads it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

PROGRESS_DELAY = 2.0  # seconds a step runs before its bar shows
_SHOWING: ContextVar[bool | None] = ContextVar("interp_progress", default=None)


def default_progress() -> bool:
    """True unless the environment variable `INTERP_PROGRESS` is 0, false, no or off."""
    return os.environ.get("INTERP_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def progress_on() -> bool:
    """Whether progress is shown here: the innermost `showing_progress`, else `default_progress()`."""
    flag = _SHOWING.get()
    return default_progress() if flag is None else flag


@contextmanager
def showing_progress(flag: bool | None) -> Iterator[bool]:
    """Progress on (True), off (False) or as by default (None) for everything run inside; yields the setting."""
    if flag is not None and not isinstance(flag, bool):
        raise TypeError(f"progress: expected True, False or None, got {flag!r}")
    token = _SHOWING.set(progress_on() if flag is None else flag)
    try:
        yield _SHOWING.get()
    finally:
        _SHOWING.reset(token)


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, total: float | None = None, unit: str = "it",
                 progress: bool = True, leave: bool = False) -> tqdm:
    """A tqdm bar on stderr (a widget in a notebook) that shows after `PROGRESS_DELAY` seconds; off unless `progress`."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress, leave=leave, delay=PROGRESS_DELAY,
                dynamic_ncols=True)


def log(message: str) -> None:
    """One line on stderr that does not break a bar being drawn."""
    tqdm.write(message, file=sys.stderr)


class StageClock:
    """`lap(stage)` closes the stage that ran since the previous lap (or `restart`).

    With a `label` and progress on (`progress`, default `progress_on()`), each lap also logs
    `label · stage: 12.3 s (total 40.1 s)` to stderr.
    """

    def __init__(self, label: str | None = None, *, progress: bool | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.label = label
        self.progress = progress_on() if progress is None else progress
        self.started = time.perf_counter()
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.seconds[stage] = round(wall - self._wall, 2)
        self.cpu_seconds[stage] = round(cpu - self._cpu, 2)
        if self.label and self.progress:
            log(f"{self.label} · {stage}: {wall - self._wall:.1f} s (total {wall - self.started:.1f} s)")
        self._wall, self._cpu = wall, cpu
