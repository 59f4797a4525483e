"""Records lost between Faust's consumer and the processor are read again from the broker.

The worker replays the REES46 sample with `TAGGER_FAULT=records_dropped:N`:
the N-th batch loses records from its middle before the input guard gets
it, as when faust-streaming clears records it already fetched. With
`first_records_dropped:1` the first batch loses the first records of a
partition while nothing is committed, so only the log's first offset shows
the gap. The guard must notice the gap, read the missing records straight
from the broker, and the outputs must equal those of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.streams.config import Settings
from tagger.streams.faults import DROP_HEAD_POINT, DROP_POINT, FAULT_ENV
from tagger.streams.worker_process import WorkerProcess
from tests.e2e.uninterrupted import (
    assert_same_as_uninterrupted,
    replay_backlog,
    wait_caught_up,
)


@pytest.mark.data
@pytest.mark.parametrize("fault", [f"{DROP_POINT}:3", f"{DROP_HEAD_POINT}:1"])
def test_dropped_records_read_again(
    fault: str,
    replay_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sample_data: Path,
    tmp_path: Path,
) -> None:
    settings, path, end_clock = replay_backlog(replay_settings, sample_data, tmp_path)

    worker = start_worker(settings, extra_env={FAULT_ENV: fault})
    wait_caught_up(worker, settings, end_clock)

    log = worker.log_path.read_text()
    assert "fault point reached, dropping records" in log
    assert "input records skipped by the consumer, reading them again" in log
    assert "gap accepted" not in log
    assert_same_as_uninterrupted(settings, path, end_clock, fault, tmp_path)
