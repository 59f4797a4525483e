"""Redis outage mid-replay: consumption and tag changes go on; the mirror converges after.

The test's own redis-server is stopped while the REES46 sample flows and
started again on the same port, empty (it keeps nothing on disk), as a
Redis that restarted without persistence would. The worker must keep
emitting tag changes meanwhile, retry the mirror with backoff (a bounded
number of log lines, not one per event), notice the lost data and rebuild
the mirror without a manual step.

CI stops Redis for 5 s; TAGGER_SOAK=1 for 60 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.streams.config import Settings
from tagger.streams.embedded import EmbeddedRedis
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.helpers import fold_changes, mirror_members, mirror_tags, tag_changes
from tests.e2e.test_real_data import _rulebook_in
from tests.e2e.uninterrupted import BackgroundReplay
from tests.reference import reference_rees46

_SOAK = os.environ.get("TAGGER_SOAK") == "1"
_OUTAGE_S = 60.0 if _SOAK else 5.0
_HOUR_MS = 3_600_000
# The sample spans 2 h 50 min of event time; this speed sends it in about 15 s.
_SPEED = 680.0


@pytest.mark.data
def test_redis_outage_mid_replay_converges(
    replay_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    embedded_redis: EmbeddedRedis,
    sample_data: Path,
    tmp_path: Path,
) -> None:
    path = sample_data / "rees46_multicat_2019-10_head.csv"
    settings = replay_settings.with_changes(
        rulebook_path=_rulebook_in("USD", tmp_path),
        redis_url=embedded_redis.url,
        mirror_timeout_s=0.5,
    )
    worker = start_worker(settings)
    replay = BackgroundReplay(path, settings, currency="USD", speed=_SPEED)
    time.sleep(4.0)

    embedded_redis.stop()
    stopped_ms = int(time.time() * 1000)
    time.sleep(_OUTAGE_S)
    status = worker.status()
    assert status is not None and status["mirror"]["pending"] > 0
    embedded_redis.start()
    started_ms = int(time.time() * 1000)

    end_clock = replay.end_clock(timeout_s=120 + _OUTAGE_S)
    worker.wait_for(
        lambda status: caught_up_to(status, end_clock=end_clock, partitions=settings.partitions),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up with the mirror flushed",
    )
    # Tag changes kept flowing while Redis was away.
    emitted = sorted(change["emitted_at"] for change in tag_changes(settings))
    in_outage = [at for at in emitted if stopped_ms <= at <= started_ms]
    assert in_outage, (stopped_ms, started_ms, emitted[:3], emitted[-3:])

    expected = {c: t for c, t in reference_rees46(path, end_clock).items() if t}
    assert fold_changes(tag_changes(settings)) == expected
    # The marker check notices the empty Redis within its retry interval
    # (5 s) and the worker writes every customer again; 30 s is three times
    # the slowest convergence seen here.
    deadline = time.monotonic() + 30.0
    while mirror_tags(settings) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert mirror_tags(settings) == expected
    assert mirror_members(settings) == expected

    log_text = worker.log_path.read_text(errors="replace")
    assert "Redis lost mirror data" in log_text or "mirror marker missing" in log_text
    # Retries are logged when failing starts and when it ends, not per event.
    failing = log_text.count("mirror writes failing, retrying with backoff")
    assert 1 <= failing <= 3, failing
