"""Per-stage wall and process-CPU seconds for experiments (CPU time is robust to other load on the machine)."""

from __future__ import annotations

import time


class StageClock:
    """`lap(stage)` closes the stage that ran since the previous lap (or `restart`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.seconds[stage] = round(wall - self._wall, 2)
        self.cpu_seconds[stage] = round(cpu - self._cpu, 2)
        self._wall, self._cpu = wall, cpu
