"""Crash anywhere: kill -9 at seeded random points of a REES46 replay, restart, compare.

Each kill is either a crash point inside a batch or a SIGKILL from outside
at a random moment. The crash points (tagger.streams.faults) come after the
state write, after the changelog flush, and after the tag changes are
acknowledged but before Redis is written and the offsets are committed. A
fourth raises an error inside the batch, after which the worker exits.

After every kill the worker is started again on the same group. The final
tag changes, Redis mirror and stored states must equal those of an
uninterrupted run.

CI runs 3 kills; TAGGER_SOAK=1 runs 10. TAGGER_CRASH_SEED picks the points.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.streams.app import BATCH_FAILED_EXIT_CODE
from tagger.streams.config import Settings
from tagger.streams.faults import FAULT_ENV, POINTS
from tagger.streams.worker_process import WorkerProcess
from tests.e2e.uninterrupted import (
    assert_same_as_uninterrupted,
    replay_backlog,
    wait_caught_up,
)

_SOAK = os.environ.get("TAGGER_SOAK") == "1"
_KILLS = 10 if _SOAK else 3
_SEED = int(os.environ.get("TAGGER_CRASH_SEED", "20261205"))
# A worker armed with a crash point dies within seconds once it consumes;
# this bound is about three times the slowest start-to-crash seen here.
_CRASH_TIMEOUT_S = 60.0


def _plan(rng: random.Random) -> list[tuple[str, str | float]]:
    """Return the kills: ("point", "POINT:N") or ("timer", seconds after it is ready)."""
    plan: list[tuple[str, str | float]] = []
    for index in range(_KILLS):
        if index % 3 == 2:
            plan.append(("timer", round(rng.uniform(0.0, 2.0), 2)))
        else:
            plan.append(("point", f"{rng.choice(POINTS)}:{rng.randint(1, 4)}"))
    return plan


@pytest.mark.data
def test_kill_9_anywhere_changes_nothing(
    replay_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sample_data: Path,
    tmp_path: Path,
) -> None:
    # Small batches give every crash point many chances inside one replay.
    settings, path, end_clock = replay_backlog(replay_settings, sample_data, tmp_path)

    plan = _plan(random.Random(_SEED))
    for kind, where in plan:
        if kind == "point":
            worker = start_worker(settings, extra_env={FAULT_ENV: str(where)}, wait=False)
            code = worker.wait_exit(_CRASH_TIMEOUT_S)
            expected = BATCH_FAILED_EXIT_CODE if str(where).startswith("batch_raises") else -9
            assert code == expected, f"crash point {where}: exit {code}: {worker.log_tail()}"
        else:
            # Counted from when every partition is assigned and recovered.
            worker = start_worker(settings)
            time.sleep(float(where))
            worker.kill()

    final = start_worker(settings)
    wait_caught_up(final, settings, end_clock)

    assert_same_as_uninterrupted(settings, path, end_clock, plan, tmp_path)
