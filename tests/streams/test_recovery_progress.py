"""Recovery progress and stall reports, driven with made-up positions and times."""

from __future__ import annotations

import dataclasses

from tagger.streams.recovery_progress import ChangelogPosition, RecoveryTracker, Report

_TOPIC = "app-customers-changelog"


def _positions(*pairs: tuple[int | None, int | None]) -> list[ChangelogPosition]:
    return [
        ChangelogPosition(table="customers", topic=_TOPIC, partition=p, offset=o, end=e)
        for p, (o, e) in enumerate(pairs)
    ]


def _events(reports: list[Report]) -> list[str]:
    return [report.event for report in reports]


def test_tracker_reports_start_progress_finish() -> None:
    tracker = RecoveryTracker("active", log_interval_s=10.0, stall_s=30.0)

    started = tracker.observe(0.0, True, _positions((-1, 99), (-1, 49)))
    quiet = tracker.observe(5.0, True, _positions((39, 99), (-1, 49)))
    progress = tracker.observe(10.0, True, _positions((59, 99), (9, 49)))
    finished = tracker.observe(12.0, False, _positions((99, 99), (49, 49)))

    assert _events(started) == ["recovery started"]
    assert started[0].fields["records_to_restore"] == 150
    assert started[0].fields["tables"] == {"customers": [0, 1]}
    assert "partitions_not_yet_sized" not in started[0].fields
    assert quiet == []
    assert _events(progress) == ["recovery progress"]
    fields = progress[0].fields
    assert fields["restored"] == 70
    assert fields["remaining"] == 80
    assert fields["total"] == 150
    assert fields["rate_per_s"] == 7.0
    assert fields["partitions"] == {"0": "40/100", "1": "40/50"}
    assert _events(finished) == ["recovery finished"]
    assert finished[0].fields["restored"] == 150
    assert tracker.stalls == 0


def test_tracker_reports_size_once_ends_known() -> None:
    tracker = RecoveryTracker("active", log_interval_s=10.0, stall_s=30.0)

    started = tracker.observe(0.0, True, _positions((-1, None), (-1, 49)))
    sized = tracker.observe(1.0, True, _positions((9, 99), (-1, 49)))
    later = tracker.observe(2.0, True, _positions((19, 99), (-1, 49)))

    assert _events(started) == ["recovery started"]
    assert started[0].fields["records_to_restore"] is None
    assert started[0].fields["partitions_not_yet_sized"] == 1
    assert _events(sized) == ["recovery size known"]
    assert sized[0].fields["records_to_restore"] == 150
    assert sized[0].fields["seconds"] == 1.0
    assert later == []


def test_tracker_counts_size_from_recorded_start() -> None:
    """Pins a bulk read already under way at the first sample: its records count in full."""
    tracker = RecoveryTracker("active", log_interval_s=10.0, stall_s=30.0)
    position = ChangelogPosition(
        table="customers", topic=_TOPIC, partition=0, offset=499, end=999, start=-1
    )

    started = tracker.observe(0.0, True, [position])
    finished = tracker.observe(1.0, False, [dataclasses.replace(position, offset=999)])

    assert started[0].fields["records_to_restore"] == 1000
    assert finished[0].fields["restored"] == 1000


def test_tracker_logs_progress_at_most_once_per_interval() -> None:
    tracker = RecoveryTracker("active", log_interval_s=10.0, stall_s=30.0)
    tracker.observe(0.0, True, _positions((-1, 999)))

    lines = []
    for second in range(1, 31):
        lines += tracker.observe(float(second), True, _positions((second * 10, 999)))

    assert _events(lines) == ["recovery progress"] * 3


def test_tracker_warns_once_stalled_then_repeats_and_resumes() -> None:
    tracker = RecoveryTracker("active", log_interval_s=1.0, stall_s=5.0)
    tracker.observe(0.0, True, _positions((10, 99)))

    before = [tracker.observe(float(t), True, _positions((10, 99))) for t in (1, 2, 3, 4)]
    stalled = tracker.observe(5.0, True, _positions((10, 99)))
    again = tracker.observe(6.0, True, _positions((10, 99)))
    resumed = tracker.observe(6.5, True, _positions((20, 99)))

    # Before the stall interval the lines are plain progress, one a second.
    assert [_events(reports) for reports in before] == [["recovery progress"]] * 4
    assert _events(stalled) == ["recovery stalled"]
    assert stalled[0].level == "warning"
    assert stalled[0].fields["partitions"] == {f"{_TOPIC}[0]": {"offset": 10, "end": 99}}
    assert _events(again) == ["recovery stalled"]
    assert _events(resumed) == ["recovery resumed"]
    assert tracker.stalls == 1
    assert not tracker.stalled


def test_tracker_counts_unknown_end_offset_as_stall() -> None:
    """Pins a recovery that waits silently for end offsets from a broker that stopped responding."""
    tracker = RecoveryTracker("active", log_interval_s=1.0, stall_s=2.0)

    tracker.observe(0.0, True, _positions((None, None)))
    stalled = tracker.observe(2.0, True, _positions((None, None)))

    assert _events(stalled) == ["recovery stalled"]
    assert stalled[0].fields["partitions"] == {f"{_TOPIC}[0]": {"offset": None, "end": None}}


def test_tracker_does_not_stall_when_nothing_remains() -> None:
    tracker = RecoveryTracker("active", log_interval_s=100.0, stall_s=2.0)

    tracker.observe(0.0, True, _positions((49, 49)))
    later = tracker.observe(60.0, True, _positions((49, 49)))

    assert later == []
    assert tracker.stalls == 0


def test_tracker_ignores_samples_outside_recovery() -> None:
    tracker = RecoveryTracker("standby", log_interval_s=1.0, stall_s=1.0)

    assert tracker.observe(0.0, False, _positions((1, 99))) == []
    assert tracker.observe(50.0, False, _positions((1, 99))) == []


def test_tracker_reports_recovery_that_ends_unread() -> None:
    """Pins a recovery that Faust ends, with a paused broker, before reading its changelogs."""
    tracker = RecoveryTracker("active", log_interval_s=10.0, stall_s=30.0)
    tracker.observe(0.0, True, _positions((None, None), (-1, 49)))

    ended = tracker.observe(1.5, False, _positions((None, None), (-1, 49)))

    assert _events(ended) == ["recovery ended before every record was restored"]
    assert ended[0].level == "error"
    assert ended[0].fields["partitions_not_read_to_end"] == {
        f"{_TOPIC}[0]": {"offset": None, "end": None},
        f"{_TOPIC}[1]": {"offset": -1, "end": 49},
    }
